// Talks to jc: the dashboard's read API (/ui/api/...), its live feed (Server-Sent Events read
// with fetch, so the token travels in the Authorization header and never in a URL), and the
// REST API that `jc` itself calls for actions.

export type Mode = "server" | "local";

export interface Config {
  mode: Mode;
  name: string | null;
  built: boolean;
  version: string;
}

export interface FlowSummary {
  id: string;
  name: string | null;
  kind: "flow" | "deployment";
  phase: string;
  error: string | null;
  endpoints: Record<string, string>;
  created: string;
  executors: number;
  at_zero: number | null;
}

export interface ExecutorInfo {
  name: string;
  needs: string[];
  shards: number;
  replicas: number;
  autoscale: { min: number; max: number; metric: string; target: number } | null;
  external: boolean;
}

export interface FlowDetail extends FlowSummary {
  graph: ExecutorInfo[];
  actions: string[];
  note: string | null;
}

/** [unix ms, desired, ready, rps, p50 ms | null, p99 ms | null] */
export type Sample = [number, number, number, number, number | null, number | null];

export interface ColdStart {
  t: number;
  replica: string | null;
  total_ms: number;
  parts: { what: string; ms: number }[];
  reason: string | null;
  failed: string | null;
}

export interface Decision {
  t: number;
  from: number;
  to: number;
  panic: boolean;
  reason: string;
}

export interface RuntimeEvent {
  t: number;
  kind: string;
  replica: string | null;
  text: string;
}

export interface ExecutorHistory {
  autoscaled: boolean;
  desired: number;
  ready: number;
  failure: string | null;
  samples: Sample[];
  cold_starts: ColdStart[];
  decisions: Decision[];
  events: RuntimeEvent[];
  logs: Record<string, string[]>;
}

export interface History {
  t: number;
  window_ms: number;
  live: boolean;
  executors: Record<string, ExecutorHistory>;
}

export type LiveEvent =
  | { type: "history"; data: History }
  | { type: "flow"; data: { phase: string; error: string | null } }
  | {
      type: "samples";
      data: { t: number; executors: Record<string, Sample>; failures?: Record<string, string> };
    }
  | { type: "event"; data: RuntimeEvent & { executor: string } }
  | { type: "cold_start"; data: { executor: string; cold_start: ColdStart } }
  | { type: "decision"; data: { executor: string; decision: Decision } }
  | { type: "log"; data: { t: number; executor: string; replica: string; lines: string[] } };

/** The token lives in this tab's session storage only. */
const TOKEN_KEY = "zeroflow.token";

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t: string | null): void {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class HttpError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

function headers(extra?: Record<string, string>): Record<string, string> {
  const h: Record<string, string> = { Accept: "application/json", ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function call<T>(method: string, path: string): Promise<T> {
  const res = await fetch(path, { method, headers: headers(), cache: "no-store" });
  const text = await res.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!res.ok) {
    const msg =
      body && typeof body === "object" && "error" in body
        ? String((body as { error: unknown }).error)
        : `${res.status} ${res.statusText}`;
    throw new HttpError(res.status, msg);
  }
  return body as T;
}

export const getConfig = () => call<Config>("GET", "/ui/api/config");
export const listFlows = () =>
  call<{ flows: FlowSummary[] }>("GET", "/ui/api/flows").then((r) => r.flows);
export const getFlow = (id: string) =>
  call<FlowDetail>("GET", `/ui/api/flows/${encodeURIComponent(id)}`);

/** The REST path of a Flow or Deployment. */
function restBase(f: FlowSummary): string {
  return `/${f.kind === "deployment" ? "deployments" : "flows"}/${encodeURIComponent(f.id)}`;
}

export type Action = "scale" | "pause" | "resume" | "restart" | "remove";

/** One action through the REST API, as `jc` sends it. */
export function act(f: FlowSummary, action: Action, executor?: string, replicas?: number) {
  const base = restBase(f);
  switch (action) {
    case "scale": {
      const q = `?replicas=${encodeURIComponent(String(replicas ?? 0))}`;
      const path =
        f.kind === "deployment"
          ? `${base}:scale${q}`
          : `${base}/executors/${encodeURIComponent(executor ?? "")}:scale${q}`;
      return call<unknown>("PUT", path);
    }
    case "remove":
      return call<unknown>("DELETE", base);
    default:
      return call<unknown>("PUT", `${base}:${action}`);
  }
}

/**
 * Reads the Flow's live feed until `signal` aborts, reconnecting after a drop (each connection
 * starts with a `history` event). `onStatus` says whether the feed is connected.
 */
export async function follow(
  id: string,
  signal: AbortSignal,
  onEvent: (e: LiveEvent) => void,
  onStatus: (connected: boolean, why?: string) => void,
): Promise<void> {
  let delay = 1000;
  while (!signal.aborted) {
    try {
      const res = await fetch(`/ui/api/flows/${encodeURIComponent(id)}/events`, {
        headers: headers({ Accept: "text/event-stream" }),
        cache: "no-store",
        signal,
      });
      if (res.status === 401 || res.status === 404) {
        const body = await res.json().catch(() => ({ error: res.statusText }));
        onStatus(false, body.error);
        throw new HttpError(res.status, body.error);
      }
      if (!res.ok || !res.body) throw new Error(`${res.status} ${res.statusText}`);
      onStatus(true);
      delay = 1000;
      await readEvents(res.body, onEvent);
      onStatus(false, "the live feed ended; reconnecting");
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof HttpError) throw e;
      onStatus(false, `the live feed dropped (${(e as Error).message}); reconnecting`);
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

/** Parses a text/event-stream body: `event:` and `data:` lines, events split by a blank line. */
async function readEvents(body: ReadableStream<Uint8Array>, onEvent: (e: LiveEvent) => void) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end: number;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let name = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        let v = i < 0 ? "" : line.slice(i + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "event") name = v;
        else if (field === "data") data.push(v);
      }
      if (data.length === 0) continue;
      try {
        onEvent({ type: name, data: JSON.parse(data.join("\n")) } as LiveEvent);
      } catch (e) {
        console.warn("unreadable event", name, e);
      }
    }
  }
}
