// The new-job form's fields, read from the OpenAPI document: POST /v1/jobs takes a union of job bodies
// discriminated by `type`; each body's properties become fields with their defaults, bounds, enums and
// descriptions. Nothing here knows a job type's settings: a new hyperparameter shows up by itself.

/** Follow $refs to the schema they name. */
export function resolve(doc, node) {
  let out = node;
  while (out && out.$ref) out = doc.components.schemas[out.$ref.split("/").pop()];
  return out || {};
}

/** [{type, schema, description}] of POST /v1/jobs, in the document's order. */
export function jobTypes(doc) {
  const body = doc.paths["/v1/jobs"].post.requestBody.content["application/json"].schema;
  const mapping = (body.discriminator && body.discriminator.mapping) || {};
  const refs = Object.entries(mapping);
  return refs.map(([type, ref]) => {
    const schema = resolve(doc, {$ref: ref});
    return {type, schema, description: schema.description || ""};
  });
}

/**
 * The field of property `name` of an object schema:
 * {path, name, kind, required, nullable, default, description, enum, min, max, integer, children, example}
 * kind: "enum", "boolean", "number", "string", "object" (a fieldset of `children`) or "json" (a textarea:
 * unions, maps, lists, nullable objects).
 */
export function fieldOf(doc, name, property, {required, prefix = "", depth = 0}) {
  const path = prefix ? `${prefix}.${name}` : name;
  const base = {path, name, required, description: property.description || resolve(doc, property).description || "",
                default: property.default, title: property.title || name};
  let node = resolve(doc, property);
  let nullable = false;
  const options = property.anyOf || property.oneOf || node.anyOf || node.oneOf;
  if (options) {
    const real = options.filter((o) => o.type !== "null");
    nullable = real.length < options.length;
    if (real.length !== 1) return {...base, kind: "json", nullable, example: exampleOf(doc, property)};
    node = resolve(doc, real[0]);
  }
  const field = {...base, nullable};
  if (Array.isArray(node.enum)) return {...field, kind: "enum", enum: node.enum};
  if (node.type === "boolean") {
    return nullable ? {...field, kind: "enum", enum: [true, false]} : {...field, kind: "boolean"};
  }
  if (node.type === "integer" || node.type === "number") {
    return {...field, kind: "number", integer: node.type === "integer",
            min: node.minimum ?? node.exclusiveMinimum, max: node.maximum ?? node.exclusiveMaximum};
  }
  if (node.type === "string") return {...field, kind: "string", example: (property.examples || node.examples || [])[0]};
  if (node.type === "object" && node.properties && !nullable && depth === 0) {
    const requiredNames = new Set(node.required || []);
    const children = Object.entries(node.properties).map(([child, schema]) =>
      fieldOf(doc, child, schema, {required: requiredNames.has(child), prefix: path, depth: depth + 1}));
    return {...field, kind: "object", description: field.description || node.description || "", children};
  }
  return {...field, kind: "json", example: exampleOf(doc, property)};
}

/** A body schema's fields, less `type` (chosen apart). */
export function fieldsOf(doc, schema) {
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {})
    .filter(([name]) => name !== "type")
    .map(([name, property]) => fieldOf(doc, name, property, {required: required.has(name)}));
}

/** An example value for a JSON field: the schema's own example, else an object of its defaults. */
function exampleOf(doc, property) {
  const examples = property.examples || resolve(doc, property).examples;
  if (examples && examples.length) return examples[0];
  const options = (property.anyOf || property.oneOf || [property]).map((o) => resolve(doc, o)).filter((o) => o.properties);
  if (!options.length) return undefined;
  const out = {};
  for (const [name, child] of Object.entries(options[0].properties)) if (child.default !== undefined) out[name] = child.default;
  return Object.keys(out).length ? out : undefined;
}

/**
 * The request body from a form's raw values: the required fields, and every other field whose value
 * differs from its default. `read(field)` gives the field's raw input; problems go to `errors[path]`.
 */
export function buildBody(fields, read, errors) {
  const body = {};
  for (const field of fields) {
    if (field.kind === "object") {
      const sub = buildBody(field.children, read, errors);
      if (Object.keys(sub).length || field.required) body[field.name] = sub;
      continue;
    }
    const value = parse(field, read(field), errors);
    if (value === undefined) {
      if (field.required && !errors[field.path]) errors[field.path] = "required";
      continue;
    }
    if (field.required || !same(value, field.default)) body[field.name] = value;
  }
  return body;
}

/** A raw input as the API wants it; undefined for "not set". */
function parse(field, raw, errors) {
  if (field.kind === "boolean") return Boolean(raw);
  const text = typeof raw === "string" ? raw.trim() : raw;
  if (text === "" || text === undefined || text === null) return undefined;
  if (field.kind === "enum") {
    const match = field.enum.find((option) => String(option) === text);
    return match === undefined ? text : match;
  }
  if (field.kind === "number") {
    const number = Number(text);
    if (!Number.isFinite(number) || (field.integer && !Number.isInteger(number))) {
      errors[field.path] = field.integer ? "a whole number" : "a number";
      return undefined;
    }
    return number;
  }
  if (field.kind === "json") {
    try {
      return JSON.parse(text);
    } catch (err) {
      errors[field.path] = `not valid JSON (${err.message})`;
      return undefined;
    }
  }
  return text;
}

function same(value, fallback) {
  if (fallback === undefined) return false;
  return JSON.stringify(value) === JSON.stringify(fallback);
}
