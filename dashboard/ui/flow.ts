// One Flow's page: its graph, a ready-to-paste jina.Client snippet, the actions, and per
// Executor the live charts, cold starts, autoscaler decisions and logs. Everything after the
// first load arrives over the live feed; a reload gets the server's history again.

import * as api from "./api";
import { executorCharts, type ChartSet } from "./charts";
import { append, clear, clock, confirmDialog, copyButton, h, ms, toast, age } from "./dom";
import { drawGraph, type GraphView } from "./graph";

/** What the page keeps per Executor, bounded like the server's rings. */
const MAX_LIST = 50;
const MAX_LOG_LINES = 500;

interface ExecView {
  info: api.ExecutorInfo;
  samples: api.Sample[];
  charts: ChartSet | null;
  chartsBox: HTMLElement;
  ready: HTMLElement;
  desired: HTMLElement;
  state: HTMLElement;
  colds: HTMLOListElement;
  decisions: HTMLOListElement;
  events: HTMLOListElement;
  log: HTMLElement;
  follow: HTMLInputElement;
  replicaFilter: HTMLSelectElement;
  failure: string | null;
}

function snippet(endpoints: Record<string, string>): string {
  const urls = Object.values(endpoints);
  const host =
    urls.find((u) => u.startsWith("grpc")) ?? urls.find((u) => u.startsWith("http")) ?? urls[0] ?? "grpc://HOST:PORT";
  return [
    "from docarray import DocList",
    "from docarray.documents import TextDoc",
    "from jina import Client",
    "",
    `client = Client(host="${host}")`,
    'docs = client.post("/", inputs=DocList[TextDoc]([TextDoc(text="hello")]), return_type=DocList[TextDoc])',
    "print(docs.text)",
  ].join("\n");
}

function pushBounded<T>(list: T[], item: T, max: number) {
  list.push(item);
  if (list.length > max) list.splice(0, list.length - max);
}

function prependItem(ol: HTMLOListElement, li: HTMLElement) {
  ol.querySelector(".empty")?.remove();
  ol.prepend(li);
  while (ol.children.length > MAX_LIST) ol.lastElementChild?.remove();
}

function coldItem(c: api.ColdStart): HTMLElement {
  const total = Math.max(1, c.parts.reduce((a, p) => a + p.ms, 0));
  const bar = h("div", { class: "parts", role: "img", "aria-label": "where the time went" });
  c.parts.forEach((p, i) => {
    const seg = h("span", { class: `part p${i}`, title: `${p.what}: ${ms(p.ms)}` });
    seg.style.flexGrow = String(Math.max(p.ms, total / 100));
    append(bar, seg);
  });
  const legend = h("ul", { class: "part-legend" });
  c.parts.forEach((p, i) => append(legend, h("li", {}, h("span", { class: `swatch p${i}` }), `${p.what}: `, h("b", {}, ms(p.ms)))));
  return h(
    "li",
    { class: c.failed ? "cold failed" : "cold", "data-testid": "cold-start" },
    h(
      "div",
      { class: "line" },
      h("time", {}, clock(c.t)),
      " ",
      c.failed ? h("b", { class: "error" }, "failed") : h("b", { "data-testid": "cold-duration" }, ms(c.total_ms)),
      c.replica ? h("span", { class: "muted" }, ` replica ${c.replica}`) : null,
    ),
    c.failed ? h("div", { class: "error" }, c.failed) : null,
    c.parts.length ? bar : null,
    c.parts.length ? legend : null,
    h("div", { class: "reason", "data-testid": "cold-reason" }, c.reason ? `Why: ${c.reason}` : "Not decided by the autoscaler (scaled through the API, or at start)"),
  );
}

function decisionItem(d: api.Decision): HTMLElement {
  return h(
    "li",
    { "data-testid": "decision" },
    h(
      "div",
      { class: "line" },
      h("time", {}, clock(d.t)),
      " ",
      h("b", {}, `${d.from} → ${d.to}`),
      d.panic ? h("span", { class: "tag warn" }, "panic") : null,
    ),
    h("div", { class: "reason" }, d.reason),
  );
}

function eventItem(e: { t: number; text: string; kind: string }): HTMLElement {
  return h("li", { class: `ev ev-${e.kind}` }, h("time", {}, clock(e.t)), " ", e.text);
}

export function flowPage(
  main: HTMLElement,
  id: string,
  mode: api.Mode,
  signIn: (why: string) => void,
): () => void {
  const abort = new AbortController();
  const views = new Map<string, ExecView>();
  let detail: api.FlowDetail | null = null;
  let graph: GraphView | null = null;
  let windowMs = 3600_000;
  let lastNow = Date.now();
  let resizeObs: ResizeObserver | null = null;
  const status = h("span", { class: "live muted", "data-testid": "live-status" }, "connecting…");
  const phaseEl = h("span", { class: "phase", "data-testid": "phase" }, "");
  const errorEl = h("p", { class: "error" });

  const setPhase = (phase: string, error: string | null) => {
    phaseEl.className = `phase phase-${phase.toLowerCase()}`;
    phaseEl.textContent = phase;
    errorEl.textContent = error ?? "";
  };

  const render = (d: api.FlowDetail) => {
    clear(main);
    const narrow = window.matchMedia("(max-width: 700px)").matches;
    graph = drawGraph(d.graph, narrow);
    setPhase(d.phase, d.error);
    const actions = h("div", { class: "actions" });
    for (const a of ["pause", "resume", "restart", "remove"] as const) {
      if (!d.actions.includes(a)) continue;
      const b = h("button", { type: "button", class: a === "remove" ? "danger" : "", "data-testid": `action-${a}` }, a[0].toUpperCase() + a.slice(1));
      b.addEventListener("click", () => flowAction(a));
      append(actions, b);
    }
    const code = snippet(d.endpoints);
    const pre = h("pre", { class: "snippet", "data-testid": "client-snippet" }, h("code", {}, code));
    append(
      main,
      h(
        "div",
        { class: "title-row" },
        h("h1", {}, d.name ?? d.id, " ", phaseEl),
        status,
      ),
      errorEl,
      h(
        "section",
        { class: "card overview" },
        h(
          "div",
          { class: "facts" },
          h("div", {}, h("span", { class: "label" }, "Id "), h("code", {}, d.id)),
          h("div", {}, h("span", { class: "label" }, "Age "), age(d.created)),
          h("div", {}, h("span", { class: "label" }, "Executors "), String(d.executors)),
        ),
        h("h2", {}, "Endpoints"),
        endpointList(d.endpoints),
        actions.childElementCount ? h("h2", {}, "Actions") : null,
        actions.childElementCount ? actions : null,
        d.note ? h("p", { class: "note", "data-testid": "note" }, d.note) : null,
      ),
      h("section", { class: "card" }, h("h2", {}, "Graph"), h("div", { class: "graph-box" }, graph.svg)),
      h(
        "section",
        { class: "card" },
        h("div", { class: "title-row" }, h("h2", {}, "Call it with jina.Client"), copyButton(code)),
        pre,
      ),
    );
    for (const e of d.graph) {
      append(main, executorSection(e));
    }
    resizeObs = new ResizeObserver(() => {
      for (const v of views.values()) v.charts?.resize(v.chartsBox.clientWidth / chartsPerRow(v.chartsBox) - 12);
    });
    for (const v of views.values()) resizeObs.observe(v.chartsBox);
  };

  const chartsPerRow = (box: HTMLElement) => (box.clientWidth > 1000 ? 3 : box.clientWidth > 640 ? 2 : 1);

  function endpointList(endpoints: Record<string, string>): HTMLElement {
    const ul = h("ul", { class: "endpoints" });
    for (const [k, v] of Object.entries(endpoints)) {
      append(ul, h("li", {}, h("span", { class: "muted" }, k), " ", h("code", {}, v), copyButton(v)));
    }
    return ul;
  }

  function executorSection(e: api.ExecutorInfo): HTMLElement {
    const ready = h("b", { "data-testid": "ready" }, "0");
    const desired = h("b", { "data-testid": "desired" }, "0");
    const state = h("span", { class: "tag", "data-testid": "state" }, "");
    const chartsBox = h("div", { class: "charts" });
    const colds = h("ol", { class: "items" }, h("li", { class: "empty muted" }, "None in the last hour."));
    const decisions = h("ol", { class: "items" }, h("li", { class: "empty muted" }, e.autoscale ? "None in the last hour." : "Not autoscaled."));
    const events = h("ol", { class: "items events" }, h("li", { class: "empty muted" }, "None in the last hour."));
    const log = h("div", { class: "log", role: "log", "aria-live": "off", "data-testid": "log" });
    const follow = h("input", { type: "checkbox", checked: true }) as HTMLInputElement;
    const replicaFilter = h("select", { "aria-label": "replica" }, h("option", { value: "" }, "all replicas")) as HTMLSelectElement;
    replicaFilter.addEventListener("change", () => {
      for (const line of Array.from(log.children) as HTMLElement[]) {
        line.hidden = !!replicaFilter.value && line.dataset.replica !== replicaFilter.value;
      }
    });
    const scaleInput = h("input", {
      type: "number",
      min: 0,
      max: e.autoscale ? e.autoscale.max : 100,
      value: e.autoscale ? Math.max(1, e.autoscale.min) : e.replicas,
      "aria-label": `replicas of ${e.name}`,
      "data-testid": "scale-input",
    }) as HTMLInputElement;
    const scaleBtn = h("button", { type: "button", "data-testid": "scale-button" }, "Scale");
    scaleBtn.addEventListener("click", () => scale(e, Number(scaleInput.value)));
    const scaleNote = e.autoscale
      ? `Autoscaled (${e.autoscale.metric}, ${e.autoscale.min} to ${e.autoscale.max}): a scale sets the count now; the autoscaler changes it again when its next decision differs.`
      : "Fixed replicas: a scale is kept (written into the Flow's spec on jc server).";
    const v: ExecView = {
      info: e,
      samples: [],
      charts: null,
      chartsBox,
      ready,
      desired,
      state,
      colds,
      decisions,
      events,
      log,
      follow,
      replicaFilter,
      failure: null,
    };
    views.set(e.name, v);
    const section = h(
      "section",
      { class: "card executor", "data-executor": e.name },
      h(
        "div",
        { class: "title-row" },
        h("h2", {}, e.name),
        h(
          "div",
          { class: "replicas" },
          h("span", { class: "label" }, "ready "),
          ready,
          h("span", { class: "label" }, " of desired "),
          desired,
          " ",
          state,
        ),
      ),
      h(
        "p",
        { class: "muted" },
        e.external
          ? "External: it runs elsewhere."
          : e.autoscale
            ? `Autoscale ${e.autoscale.min}..${e.autoscale.max} on ${e.autoscale.metric} (target ${e.autoscale.target})`
            : `${e.replicas} replica(s)`,
        e.shards > 1 ? `, ${e.shards} shards` : "",
      ),
      chartsBox,
      h(
        "div",
        { class: "columns" },
        h("div", {}, h("h3", {}, "Cold starts"), colds),
        h("div", {}, h("h3", {}, "Autoscaler decisions"), decisions),
        h("div", {}, h("h3", {}, "Runtime events"), events),
      ),
      h(
        "div",
        { class: "title-row" },
        h("h3", {}, "Logs"),
        h("label", { class: "muted" }, follow, " follow"),
        replicaFilter,
      ),
      log,
      e.external
        ? null
        : h(
            "div",
            { class: "scale" },
            h("label", {}, "Replicas ", scaleInput),
            scaleBtn,
            h("p", { class: "muted small" }, scaleNote),
          ),
    );
    // uPlot needs the box in the document to measure it: made after the section is placed.
    queueMicrotask(() => {
      v.charts = executorCharts(chartsBox);
      v.charts.resize(chartsBox.clientWidth / chartsPerRow(chartsBox) - 12);
      v.charts.update(v.samples, lastNow, windowMs);
    });
    return section;
  }

  function setCounts(v: ExecView, desired: number, ready: number) {
    v.ready.textContent = String(ready);
    v.desired.textContent = String(desired);
    const failed = !!v.failure;
    v.state.textContent = failed ? "failed" : desired === 0 && ready === 0 ? "at zero" : ready < desired ? "starting" : "serving";
    v.state.className = `tag ${failed ? "bad" : desired === 0 && ready === 0 ? "" : ready < desired ? "warn" : "good"}`;
    v.state.title = v.failure ?? "";
    graph?.setReplicas(v.info.name, ready, desired, failed);
  }

  function addLog(v: ExecView, replica: string, lines: string[]) {
    if (![...v.replicaFilter.options].some((o) => o.value === replica)) {
      append(v.replicaFilter, h("option", { value: replica }, replica));
    }
    for (const line of lines) {
      const div = h("div", { class: "line", "data-replica": replica, "data-testid": "log-line" }, h("span", { class: "replica" }, replica), " ", line);
      div.hidden = !!v.replicaFilter.value && v.replicaFilter.value !== replica;
      v.log.append(div);
    }
    while (v.log.children.length > MAX_LOG_LINES) v.log.firstElementChild?.remove();
    if (v.follow.checked) v.log.scrollTop = v.log.scrollHeight;
  }

  function onEvent(ev: api.LiveEvent) {
    switch (ev.type) {
      case "flow":
        setPhase(ev.data.phase, ev.data.error);
        break;
      case "history": {
        windowMs = ev.data.window_ms;
        lastNow = ev.data.t;
        status.textContent = ev.data.live ? "live" : "not running here: no live data";
        for (const [name, x] of Object.entries(ev.data.executors)) {
          const v = views.get(name);
          if (!v) continue;
          v.samples = x.samples.slice();
          v.failure = x.failure;
          setCounts(v, x.desired, x.ready);
          clear(v.colds);
          clear(v.decisions);
          clear(v.events);
          if (!x.events.length) append(v.events, h("li", { class: "empty muted" }, "None in the last hour."));
          for (const e of x.events) prependItem(v.events, eventItem(e));
          if (!x.cold_starts.length) append(v.colds, h("li", { class: "empty muted" }, "None in the last hour."));
          if (!x.decisions.length) append(v.decisions, h("li", { class: "empty muted" }, x.autoscaled ? "None in the last hour." : "Not autoscaled."));
          for (const c of x.cold_starts) prependItem(v.colds, coldItem(c));
          for (const d of x.decisions) prependItem(v.decisions, decisionItem(d));
          clear(v.log);
          for (const [replica, lines] of Object.entries(x.logs)) addLog(v, replica, lines);
          v.charts?.update(v.samples, lastNow, windowMs);
        }
        break;
      }
      case "samples": {
        lastNow = ev.data.t;
        for (const [name, s] of Object.entries(ev.data.executors)) {
          const v = views.get(name);
          if (!v) continue;
          const last = v.samples[v.samples.length - 1];
          if (!last || s[0] > last[0]) pushBounded(v.samples, s, 3600);
          v.failure = ev.data.failures?.[name] ?? null;
          setCounts(v, s[1], s[2]);
          const from = lastNow - windowMs;
          while (v.samples.length > 1 && v.samples[1][0] < from) v.samples.shift();
          v.charts?.update(v.samples, lastNow, windowMs);
        }
        break;
      }
      case "event": {
        const v = views.get(ev.data.executor);
        if (v) prependItem(v.events, eventItem(ev.data));
        break;
      }
      case "cold_start": {
        const v = views.get(ev.data.executor);
        if (v) prependItem(v.colds, coldItem(ev.data.cold_start));
        break;
      }
      case "decision": {
        const v = views.get(ev.data.executor);
        if (v) prependItem(v.decisions, decisionItem(ev.data.decision));
        break;
      }
      case "log": {
        const v = views.get(ev.data.executor);
        if (v) addLog(v, ev.data.replica, ev.data.lines);
        break;
      }
    }
  }

  async function scale(e: api.ExecutorInfo, n: number) {
    if (!detail) return;
    if (!Number.isInteger(n) || n < 0 || n > 100) {
      toast("Replicas must be a whole number from 0 to 100", "error");
      return;
    }
    const ok = await confirmDialog(
      `Scale ${e.name} to ${n}?`,
      e.autoscale
        ? `${e.name} is autoscaled (${e.autoscale.min} to ${e.autoscale.max}). It gets ${n} replica(s) now; the autoscaler changes the count again when its next decision differs.`
        : `${e.name} will run ${n} replica(s).`,
      "Scale",
    );
    if (!ok) return;
    try {
      await api.act(detail, "scale", e.name, n);
      toast(`Scaling ${e.name} to ${n}`);
    } catch (x) {
      toast(`Scale failed: ${(x as Error).message}`, "error");
    }
  }

  async function flowAction(a: "pause" | "resume" | "restart" | "remove") {
    if (!detail) return;
    const what: Record<typeof a, string> = {
      pause: "Its replicas stop and its endpoints stop answering until you resume it.",
      resume: "It starts again on the same endpoints.",
      restart: "Every replica is replaced; requests wait meanwhile.",
      remove: "It stops for good and its endpoints are released. This cannot be undone.",
    };
    const ok = await confirmDialog(`${a[0].toUpperCase() + a.slice(1)} ${detail.name ?? detail.id}?`, what[a], a[0].toUpperCase() + a.slice(1));
    if (!ok) return;
    try {
      await api.act(detail, a);
      toast(`${a} requested`);
      // The live feed brings the new phase; a removed Flow has no page.
      if (a === "remove") location.hash = "#/";
    } catch (x) {
      toast(`${a} failed: ${(x as Error).message}`, "error");
    }
  }

  async function load() {
    try {
      detail = await api.getFlow(id);
    } catch (e) {
      if (e instanceof api.HttpError && e.status === 401) return signIn(e.message);
      clear(main);
      append(main, h("p", { class: "error" }, String((e as Error).message)), h("a", { href: "#/" }, "All Flows"));
      return;
    }
    resizeObs?.disconnect();
    for (const v of views.values()) v.charts?.destroy();
    views.clear();
    render(detail);
  }

  const scheme = window.matchMedia("(prefers-color-scheme: dark)");
  const recolour = () => {
    // Chart colours are read once per chart: draw them again in the new scheme.
    for (const v of views.values()) {
      v.charts?.destroy();
      v.charts = executorCharts(v.chartsBox);
      v.charts.resize(v.chartsBox.clientWidth / chartsPerRow(v.chartsBox) - 12);
      v.charts.update(v.samples, lastNow, windowMs);
    }
  };
  scheme.addEventListener("change", recolour);

  load().then(() => {
    if (!detail) return;
    api
      .follow(id, abort.signal, onEvent, (connected, why) => {
        status.textContent = connected ? "live" : why ?? "disconnected";
        status.classList.toggle("on", connected);
      })
      .catch((e) => {
        if (e instanceof api.HttpError && e.status === 401) signIn(e.message);
        else status.textContent = String(e.message ?? e);
      });
  });
  void mode;

  return () => {
    abort.abort();
    scheme.removeEventListener("change", recolour);
    resizeObs?.disconnect();
    for (const v of views.values()) v.charts?.destroy();
  };
}
