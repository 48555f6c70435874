// The Flow's graph: the gateway, each Executor after the ones it `needs` (parallel branches side
// by side, merges where they meet), and back to the gateway, laid out by dagre and drawn as SVG.

import dagre from "@dagrejs/dagre";
import type { ExecutorInfo } from "./api";

const SVG = "http://www.w3.org/2000/svg";
const START = "\u0000gateway";
const END = "\u0000gateway-out";

function el<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

export interface GraphView {
  svg: SVGSVGElement;
  /** Sets an Executor node's replicas line and state. */
  setReplicas(name: string, ready: number, desired: number, failed: boolean): void;
}

export function drawGraph(executors: ExecutorInfo[], narrow: boolean): GraphView {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: narrow ? "TB" : "LR", nodesep: 24, ranksep: 48, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  const W = 150;
  const H = 52;
  g.setNode(START, { width: 90, height: 36 });
  g.setNode(END, { width: 90, height: 36 });
  const names = new Set(executors.map((e) => e.name));
  const needed = new Set<string>();
  for (const e of executors) {
    g.setNode(e.name, { width: W, height: H });
    const needs = e.needs.filter((n) => n === "gateway" || names.has(n));
    if (needs.length === 0) g.setEdge(START, e.name);
    for (const n of needs) {
      if (n === "gateway") g.setEdge(START, e.name);
      else {
        g.setEdge(n, e.name);
        needed.add(n);
      }
    }
  }
  for (const e of executors) if (!needed.has(e.name)) g.setEdge(e.name, END);
  dagre.layout(g);
  const graph = g.graph();
  const width = Math.ceil(graph.width ?? 300);
  const height = Math.ceil(graph.height ?? 100);
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": "The Flow's graph of Executors",
    class: "graph",
  }) as SVGSVGElement;
  const defs = el("defs", {});
  const marker = el("marker", {
    id: "arrow",
    viewBox: "0 0 10 10",
    refX: 9,
    refY: 5,
    markerWidth: 7,
    markerHeight: 7,
    orient: "auto-start-reverse",
  });
  marker.append(el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
  defs.append(marker);
  svg.append(defs);
  for (const e of g.edges()) {
    const pts: { x: number; y: number }[] = g.edge(e).points ?? [];
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
    svg.append(el("path", { d, class: "edge", "marker-end": "url(#arrow)" }));
  }
  const lines = new Map<string, { text: SVGTextElement; box: SVGRectElement }>();
  for (const id of g.nodes()) {
    const n = g.node(id);
    const x = n.x - n.width / 2;
    const y = n.y - n.height / 2;
    const grp = el("g", { class: id.startsWith("\u0000") ? "node gateway" : "node executor" });
    if (!id.startsWith("\u0000")) grp.setAttribute("data-node", id);
    const box = el("rect", { x, y, width: n.width, height: n.height, rx: 8 }) as SVGRectElement;
    grp.append(box);
    const title = el("text", { x: n.x, y: id.startsWith("\u0000") ? n.y + 4 : n.y - 6, "text-anchor": "middle", class: "name" });
    title.textContent = id.startsWith("\u0000") ? "gateway" : id;
    grp.append(title);
    if (!id.startsWith("\u0000")) {
      const sub = el("text", { x: n.x, y: n.y + 14, "text-anchor": "middle", class: "sub" }) as SVGTextElement;
      const info = executors.find((e) => e.name === id);
      sub.textContent = info?.external ? "external" : "…";
      grp.append(sub);
      lines.set(id, { text: sub, box });
    }
    svg.append(grp);
  }
  return {
    svg,
    setReplicas(name, ready, desired, failed) {
      const l = lines.get(name);
      if (!l) return;
      l.text.textContent = failed
        ? "failed"
        : desired === 0 && ready === 0
          ? "at zero"
          : `${ready}/${desired} ready`;
      const grp = l.box.parentElement;
      grp?.classList.toggle("zero", desired === 0 && ready === 0 && !failed);
      grp?.classList.toggle("failed", failed);
      grp?.classList.toggle("up", ready > 0 && !failed);
    },
  };
}
