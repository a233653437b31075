// The API from the browser: the key signed in with (sessionStorage: gone when the tab closes), every call
// with `Authorization: Bearer`, errors as the API's envelope says them, and cursor paging.

const KEY_ITEM = "rlhf-service.api-key";

// The API's root: the dashboard is served at <root>/ui/, so a proxy's prefix is kept.
export const API_ROOT = location.pathname.replace(/\/ui(\/.*)?$/, "");

export const auth = {
  key: () => sessionStorage.getItem(KEY_ITEM),
  signIn: (key) => sessionStorage.setItem(KEY_ITEM, key),
  signOut: () => sessionStorage.removeItem(KEY_ITEM),
};

/** A refused request: `message` is the API's own, `param` the field it names. */
export class ApiError extends Error {
  constructor(status, payload) {
    const error = payload && payload.error;
    super(error && error.message ? error.message : `the server answered ${status}`);
    this.status = status;
    this.type = error ? error.type : null;
    this.param = error ? error.param : null;
    this.details = (error && error.details) || [];
  }
}

export function url(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") params.set(name, value);
  }
  const search = params.toString();
  return API_ROOT + path + (search ? `?${search}` : "");
}

export function authHeaders(key = auth.key()) {
  return key ? {Authorization: `Bearer ${key}`} : {};
}

/** One call. A 401 signs the tab out (the key was revoked) unless the call brought its own key. */
export async function request(path, {method = "GET", query, body, key, signal} = {}) {
  const headers = {Accept: "application/json", ...authHeaders(key || auth.key())};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url(path, query), {method, headers, signal, cache: "no-store",
                                              body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, {error: {message: "the API cannot be reached; check the server and retry"}});
  }
  const payload = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new ApiError(response.status, payload);
    if (response.status === 401 && !key) {
      auth.signOut();
      window.dispatchEvent(new CustomEvent("rlhf:signed-out", {detail: error.message}));
    }
    throw error;
  }
  return payload;
}

export const get = (path, query, options) => request(path, {query, ...options});
export const post = (path, body, options) => request(path, {method: "POST", body, ...options});

/**
 * Every page of a cursor-paged list, following `after`. `cursor(item)` is the next page's `after`
 * (a step for metrics and samples, an id for events and jobs). Stops early when `signal` aborts.
 */
export async function getAll(path, {query = {}, cursor = (item) => item.step, limit = 1000, signal,
                                    onPage} = {}) {
  const items = [];
  let after;
  for (;;) {
    const page = await get(path, {...query, limit, after}, {signal});
    items.push(...page.data);
    if (onPage) onPage(page.data);
    if (!page.has_more || !page.data.length) return items;
    after = cursor(page.data[page.data.length - 1]);
  }
}

let schema;
/** The OpenAPI document (no key needed), fetched once per page load. */
export function openapi() {
  schema ??= fetch(url("/openapi.json"), {cache: "no-store"}).then((r) => {
    if (!r.ok) throw new ApiError(r.status, null);
    return r.json();
  }).catch((err) => {
    schema = null;  // asked again next time
    throw err;
  });
  return schema;
}
