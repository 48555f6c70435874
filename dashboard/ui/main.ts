// The dashboard's entry: the sign-in form (jc server), the Flows list, and one Flow's page,
// chosen by the URL's fragment (#/ or #/flows/ID), so no path of the REST API is taken.

import "./style.css";
import * as api from "./api";
import { age, append, clear, copyButton, h } from "./dom";
import { flowPage } from "./flow";

const app = document.getElementById("app")!;
let config: api.Config | null = null;
/** Stops what the current view runs (its live feed, timers). */
let leave: (() => void) | null = null;

function header(): HTMLElement {
  const right = h("div", { class: "who" });
  if (config?.mode === "server" && api.token()) {
    const out = h("button", { type: "button", class: "link", "data-testid": "sign-out" }, "Sign out");
    out.addEventListener("click", () => {
      api.setToken(null);
      location.hash = "#/";
      route();
    });
    append(right, out);
  } else if (config?.mode === "local") {
    append(right, h("span", { class: "muted" }, "jc flow serve"));
  }
  return h(
    "header",
    { class: "top" },
    h("a", { href: "#/", class: "brand" }, h("span", { class: "logo", "aria-hidden": "true" }, "◎"), "Zeroflow"),
    right,
  );
}

function signIn(why?: string): void {
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    placeholder: "paste your token",
    "aria-describedby": "token-help",
  });
  const err = h("p", { class: "error", role: "alert" }, why ?? "");
  const form = h(
    "form",
    { class: "signin card", "data-testid": "signin" },
    h("h1", {}, "Sign in"),
    h("label", { for: "token" }, "Token"),
    input,
    h(
      "p",
      { id: "token-help", class: "muted" },
      "A token from ",
      h("code", {}, "jc server token create NAME"),
      ". It is kept in this tab only (session storage) and sent in the Authorization header.",
    ),
    h("button", { type: "submit" }, "Sign in"),
    err,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const t = input.value.trim();
    if (!t) return;
    api.setToken(t);
    try {
      await api.listFlows();
      location.hash = "#/";
      route();
    } catch (x) {
      api.setToken(null);
      err.textContent =
        x instanceof api.HttpError && x.status === 401 ? `That token is not accepted: ${x.message}` : String(x);
    }
  });
  clear(app);
  append(app, header(), h("main", {}, form));
  input.focus();
}

function phaseBadge(phase: string): HTMLElement {
  return h("span", { class: `phase phase-${phase.toLowerCase()}`, "data-testid": "phase" }, phase);
}

function endpointList(endpoints: Record<string, string>): HTMLElement {
  const ul = h("ul", { class: "endpoints" });
  for (const [k, v] of Object.entries(endpoints)) {
    append(ul, h("li", {}, h("span", { class: "muted" }, k), " ", h("code", {}, v), copyButton(v)));
  }
  if (!Object.keys(endpoints).length) append(ul, h("li", { class: "muted" }, "none yet"));
  return ul;
}

async function flowsList(): Promise<void> {
  const main = h("main", {});
  clear(app);
  append(app, header(), main);
  let flows: api.FlowSummary[];
  try {
    flows = await api.listFlows();
  } catch (e) {
    if (e instanceof api.HttpError && e.status === 401) return signIn(e.message);
    append(main, h("p", { class: "error" }, String(e)));
    return;
  }
  const refresh = h("button", { type: "button", class: "link" }, "Refresh");
  refresh.addEventListener("click", () => flowsList());
  append(main, h("div", { class: "title-row" }, h("h1", {}, "Flows"), refresh));
  if (!flows.length) {
    append(
      main,
      h("p", { class: "muted card" }, "No Flows yet. Deploy one with ", h("code", {}, "jc flow deploy FOLDER"), "."),
    );
    return;
  }
  const list = h("div", { class: "flows" });
  for (const f of flows) {
    const zero =
      f.at_zero === null ? "—" : `${f.at_zero} of ${f.executors}`;
    append(
      list,
      h(
        "article",
        { class: "card flow-row", "data-flow-id": f.id },
        h(
          "div",
          { class: "flow-name" },
          h("a", { href: `#/flows/${encodeURIComponent(f.id)}` }, f.name ?? f.id),
          f.name ? h("span", { class: "muted id" }, f.id) : null,
          f.kind === "deployment" ? h("span", { class: "tag" }, "Deployment") : null,
        ),
        h("div", { class: "cell" }, phaseBadge(f.phase)),
        h("div", { class: "cell" }, h("span", { class: "label" }, "Age "), age(f.created)),
        h(
          "div",
          { class: "cell", "data-testid": "at-zero" },
          h("span", { class: "label" }, "Executors at zero "),
          zero,
        ),
        h("div", { class: "cell wide" }, endpointList(f.endpoints)),
      ),
    );
  }
  append(main, list);
}

async function route(): Promise<void> {
  leave?.();
  leave = null;
  if (!config) {
    try {
      config = await api.getConfig();
    } catch (e) {
      clear(app);
      append(app, h("p", { class: "error" }, `jc does not answer: ${e}`));
      return;
    }
    document.title = config.mode === "local" && config.name ? `${config.name} · Zeroflow` : "Zeroflow";
  }
  if (config.mode === "server" && !api.token()) return signIn();
  const m = location.hash.match(/^#\/flows\/([^/]+)$/);
  if (m) {
    const main = h("main", {});
    clear(app);
    append(app, header(), main);
    leave = flowPage(main, decodeURIComponent(m[1]), config.mode, (why) => signIn(why));
    return;
  }
  if (config.mode === "local" && location.hash !== "#/list") {
    // One Flow: its page is the dashboard.
    try {
      const [f] = await api.listFlows();
      if (f) {
        location.replace(`#/flows/${encodeURIComponent(f.id)}`);
        return;
      }
    } catch {
      // The list view says what went wrong.
    }
  }
  await flowsList();
}

window.addEventListener("hashchange", () => route());
route();
