// Per-Executor charts with uPlot: replicas (desired and ready, as steps), calls per second, and
// p50/p99 latency, over the last hour. Colours come from the page's CSS variables, so the charts
// follow light and dark mode.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import type { Sample } from "./api";

function css(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

function axes(unit: string): uPlot.Axis[] {
  const stroke = css("--muted");
  const grid = { stroke: css("--grid"), width: 1 };
  return [
    { stroke, grid, ticks: grid },
    { stroke, grid, ticks: grid, label: unit, labelSize: 16, size: 48 },
  ];
}

export interface ChartSet {
  update(samples: Sample[], now: number, windowMs: number): void;
  resize(width: number): void;
  destroy(): void;
}

const HEIGHT = 150;
const MIN_SPAN_MS = 5 * 60_000;

/** Three charts in `root` for one Executor. */
export function executorCharts(root: HTMLElement): ChartSet {
  const stepped = uPlot.paths.stepped!({ align: 1 });
  const width = Math.max(200, root.clientWidth || 300);
  const mk = (title: string, unit: string, series: uPlot.Series[], min0 = true) => {
    const box = document.createElement("div");
    box.className = "chart";
    root.append(box);
    const opts: uPlot.Options = {
      title,
      width,
      height: HEIGHT,
      series: [{}, ...series],
      axes: axes(unit),
      scales: { x: { time: true }, y: min0 ? { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] } : {} },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
    return new uPlot(opts, [[], ...series.map(() => [])] as uPlot.AlignedData, box);
  };
  const replicas = mk("Replicas", "replicas", [
    { label: "desired", stroke: css("--accent2"), width: 2, paths: stepped, dash: [6, 4] },
    { label: "ready", stroke: css("--accent"), width: 2, paths: stepped, fill: css("--accent-fill") },
  ]);
  const rate = mk("Calls per second", "req/s", [
    { label: "req/s", stroke: css("--accent"), width: 2, paths: stepped, fill: css("--accent-fill") },
  ]);
  const latency = mk("Latency", "ms", [
    { label: "p50", stroke: css("--accent"), width: 2, points: { show: true, size: 4 } },
    { label: "p99", stroke: css("--warn"), width: 2, points: { show: true, size: 4 } },
  ]);
  const charts = [replicas, rate, latency];
  return {
    update(samples, now, windowMs) {
      // The last hour; a younger history is shown over the last five minutes at least, so
      // its first minutes are not a sliver at the right edge.
      const oldest = samples.length ? samples[0][0] : now;
      const from = Math.max(now - windowMs, Math.min(oldest, now - MIN_SPAN_MS)) / 1000;
      const xs: number[] = [];
      const d: number[] = [];
      const r: number[] = [];
      const q: number[] = [];
      const p50: (number | null)[] = [];
      const p99: (number | null)[] = [];
      for (const s of samples) {
        xs.push(Math.max(from, s[0] / 1000));
        d.push(s[1]);
        r.push(s[2]);
        q.push(s[3]);
        p50.push(s[4]);
        p99.push(s[5]);
      }
      // Steps carry the last value to now.
      const last = samples[samples.length - 1];
      if (last && last[0] / 1000 < now / 1000) {
        xs.push(now / 1000);
        d.push(last[1]);
        r.push(last[2]);
        q.push(last[3]);
        p50.push(null);
        p99.push(null);
      }
      const scale = { min: from, max: now / 1000 };
      replicas.setData([xs, d, r], false);
      rate.setData([xs, q], false);
      latency.setData([xs, p50, p99], false);
      for (const c of charts) {
        c.setScale("x", scale);
      }
    },
    resize(w) {
      for (const c of charts) c.setSize({ width: Math.max(200, w), height: HEIGHT });
    },
    destroy() {
      for (const c of charts) c.destroy();
      root.replaceChildren();
    },
  };
}
