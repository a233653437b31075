// Building DOM nodes and formatting values. Text always goes in as text nodes, never as HTML, so nothing
// a dataset row, a completion or an error message holds can become markup.

/** h("a#id.class.other", {href: "#/jobs", onclick: fn, "data-id": id}, "text", child, [more]) */
export function h(spec, attrs = {}, ...children) {
  const [head, ...classes] = spec.split(".");
  const [tag, id] = head.split("#");
  const el = document.createElement(tag || "div");
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(" ");
  if (!isAttrs(attrs)) {  // h("p", "text") and h("div", child): no attributes
    children.unshift(attrs);
    attrs = {};
  }
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className += (el.className ? " " : "") + value;
    else if (name in el && typeof value !== "string") el[name] = value;  // checked, value, disabled...
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function isAttrs(value) {
  return value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

/** A message box: kind is "error", "info" or "ok". */
export function notice(kind, ...text) {
  return h(`div.notice.notice-${kind}`, {role: kind === "error" ? "alert" : "status"}, ...text);
}

export const ACTIVE = new Set(["queued", "running", "cancelling", "pausing"]);

export function statusBadge(status) {
  return h(`span.badge.status-${status}`, {"data-status": status}, status);
}

export function number(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2).replace(/\.?0+e/, "e");
  return value.toPrecision(digits).replace(/\.?0+$/, "");
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function dateTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString("en-GB", {year: "numeric", month: "short", day: "numeric", hour: "2-digit",
                                    minute: "2-digit", second: "2-digit"});
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400), hr = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

export function ago(iso) {
  if (!iso) return "–";
  return `${duration((Date.now() - new Date(iso).getTime()) / 1000)} ago`;
}

/** A short, readable label for a job: its name, else its id. */
export function jobLabel(job) {
  return job.name || job.id;
}
