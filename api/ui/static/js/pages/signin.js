// Sign in with a project's API key. The key is checked against the API (GET /v1/jobs) before it is kept,
// in sessionStorage only: it leaves with the tab.

import {auth, get} from "../api.js";
import {h, notice, replace} from "../dom.js";

export function signInPage({view, next, message}) {
  document.title = "Sign in · rlhf-service";
  const input = h("input#api-key", {type: "password", name: "api_key", autocomplete: "off", spellcheck: "false",
                                    placeholder: "rlhf_…", required: true});
  const status = h("div.form-status");
  const button = h("button.button.primary", {type: "submit"}, "Sign in");
  const form = h("form.card.signin", {onsubmit: submit},
    h("h1", "Sign in"),
    h("p.muted", "Paste an API key of your project. It is kept in this tab only (sessionStorage) and sent as ",
      h("code", "Authorization: Bearer"), " with each request."),
    h("label", {for: "api-key"}, "API key"),
    input,
    h("p.hint", "A local server writes its key to ", h("code", "var/api-key"), "; ",
      h("code", "rlhf-service create-project NAME"), " prints a new one."),
    status,
    h("div.form-actions", button));
  if (message) replace(status, notice("error", message));
  replace(view, h("div.signin-wrap", form));
  input.focus();

  async function submit(event) {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    replace(status, notice("info", "Checking the key…"));
    try {
      await get("/v1/jobs", {limit: 1}, {key});
      auth.signIn(key);
      location.hash = next && next !== "#/signin" ? next : "#/jobs";
    } catch (err) {
      replace(status, notice("error", err.message));
      button.disabled = false;
      input.select();
    }
  }
}
