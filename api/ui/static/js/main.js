// The dashboard's shell: hash routes to pages, sign-in guard, navigation. A page is a function
// page(ctx) that fills ctx.view; ctx.signal aborts when the user leaves, and ctx.onLeave(fn) registers
// what to stop then (streams, timers, charts).

import {auth} from "./api.js";
import {h, notice, replace} from "./dom.js";
import {comparePage} from "./pages/compare.js";
import {datasetPage, datasetsPage} from "./pages/datasets.js";
import {jobPage} from "./pages/job.js";
import {jobsPage} from "./pages/jobs.js";
import {newJobPage} from "./pages/newjob.js";
import {signInPage} from "./pages/signin.js";

const ROUTES = [
  [/^\/jobs\/([\w-]+)$/, jobPage, "jobs"],
  [/^\/jobs$/, jobsPage, "jobs"],
  [/^\/compare$/, comparePage, "jobs"],
  [/^\/datasets\/([\w-]+)$/, datasetPage, "datasets"],
  [/^\/datasets$/, datasetsPage, "datasets"],
  [/^\/new$/, newJobPage, "new"],
];

const app = document.getElementById("app");
let leave = null;
let signedOutMessage = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const at = raw.indexOf("?");
  return {path: decodeURIComponent(at < 0 ? raw : raw.slice(0, at)),
          query: new URLSearchParams(at < 0 ? "" : raw.slice(at + 1))};
}

function render() {
  if (leave) leave();
  const controller = new AbortController();
  const stops = [];
  leave = () => {
    controller.abort();
    for (const stop of stops.splice(0)) {
      try { stop(); } catch (err) { console.warn("while leaving the page:", err); }
    }
  };
  const {path, query} = parseHash();
  const view = h("div.view");
  replace(app, view);
  const ctx = {view, query, signal: controller.signal, onLeave: (fn) => stops.push(fn)};
  document.body.classList.toggle("signed-out", !auth.key());

  if (path === "/signin" || !auth.key()) {
    const next = path === "/signin" ? (query.get("next") || "#/jobs") : location.hash || "#/jobs";
    signInPage({...ctx, next, message: signedOutMessage});
    signedOutMessage = null;
    return;
  }
  for (const [pattern, page, section] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === section);
    }
    ctx.params = match.slice(1);
    page(ctx);
    return;
  }
  replace(view, notice("error", `No page at #${path}. `, h("a", {href: "#/jobs"}, "Go to the jobs")));
}

window.addEventListener("hashchange", render);
window.addEventListener("rlhf:signed-out", (event) => {
  signedOutMessage = event.detail;
  if (parseHash().path !== "/signin") location.hash = `#/signin?next=${encodeURIComponent(location.hash)}`;
});
document.getElementById("sign-out").addEventListener("click", () => {
  auth.signOut();
  location.hash = "#/signin";
});
render();
