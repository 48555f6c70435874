// The dashboard in a real browser: Debian's chromium driven headless by playwright-core, against
// a real `jc server` (and a real `jc flow serve`), a Flow with a Python Executor at zero, and the
// real jina.Client. Run after `cargo build --workspace --bins` and `scripts/setup-python.sh`:
//
//   cd dashboard && npm ci && npm run build && node --test test/
//
// Environment: CHROMIUM (default /usr/bin/chromium), ZEROFLOW_BIN (default ../target/debug),
// UPDATE_SCREENSHOTS=1 writes the Flow page's screenshots to docs/ (else to test-results/).
// Every wait is for a condition, with a generous deadline: the machine may be busy.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const bin = process.env.ZEROFLOW_BIN ?? join(root, "target", "debug");
const venv = join(root, ".venv", "bin");
const jc = join(bin, "jc");
const python = join(venv, "python");
const shots = process.env.UPDATE_SCREENSHOTS === "1" ? join(root, "docs") : join(here, "..", "test-results");
const env = {
  ...process.env,
  PATH: `${bin}:${venv}:${process.env.PATH}`,
  JINA_OPTOUT_TELEMETRY: "1",
  NO_VERSION_CHECK: "1",
};
// A wake-up of a Python Executor on a busy 2-core machine can take a while (the first fork of
// the zygote imports jina).
const LONG = 180_000;

for (const [what, path] of [
  ["jc (cargo build --workspace --bins)", jc],
  ["Python venv with jina (bash scripts/setup-python.sh)", python],
  ["chromium (apt-get install chromium)", process.env.CHROMIUM ?? "/usr/bin/chromium"],
]) {
  assert.ok(existsSync(path), `${what} is missing: ${path}`);
}

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

async function until(what, deadlineMs, check, everyMs = 250) {
  const end = Date.now() + deadlineMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A process of ours, stopped by SIGTERM at the end (SIGKILL if it lingers). */
function start(args, opts = {}) {
  const child = spawn(args[0], args.slice(1), { env, stdio: ["ignore", "pipe", "pipe"], ...opts });
  const out = [];
  child.stdout.on("data", (d) => out.push(d.toString()));
  child.stderr.on("data", (d) => out.push(d.toString()));
  child.output = () => out.join("");
  child.exited = new Promise((r) => child.on("exit", r));
  return child;
}

async function stop(child) {
  if (!child || child.exitCode !== null) return;
  child.kill("SIGTERM");
  const t = setTimeout(() => child.kill("SIGKILL"), 60_000);
  await child.exited;
  clearTimeout(t);
}

/** A project: a Python Executor at zero (greeter) and a Rust test Executor (audit) in parallel
 *  branches that merge in tagger. */
function project(dir) {
  mkdirSync(join(dir, "greeter"), { recursive: true });
  writeFileSync(
    join(dir, "flow.yml"),
    `jtype: Flow
executors:
  - name: greeter
    uses: greeter/config.yml
    jcloud:
      autoscale:
        min: 0
        max: 3
        metric: concurrency
        target: 10
  - name: audit
    command: zeroflow-test-executor --append=-audited
    needs: gateway
  - name: tagger
    command: zeroflow-test-executor --append=-tagged
    needs: [greeter, audit]
`,
  );
  writeFileSync(join(dir, "greeter", "config.yml"), "jtype: Greeter\npy_modules:\n  - executor.py\n");
  writeFileSync(
    join(dir, "greeter", "executor.py"),
    `from docarray import DocList
from docarray.documents import TextDoc
from jina import Executor, requests


class Greeter(Executor):
    @requests
    def greet(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            d.text = f'hello, {d.text}'
        print(f'greeted {len(docs)} document(s): {docs[0].text}', flush=True)
        return docs
`,
  );
}

let browser;
const work = mkdtempSync(join(tmpdir(), "zf-dashboard-"));

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  rmSync(work, { recursive: true, force: true });
});

/** Runs the snippet the page offers, as a user pasting it would; resolves with its output. */
function runSnippet(code) {
  return new Promise((res, rej) => {
    const p = spawn(python, ["-c", code], { env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (out += d));
    p.on("exit", (code) => (code === 0 ? res(out) : rej(new Error(`jina.Client exited ${code}: ${out}`))));
  });
}

const text = (page, sel) => page.locator(sel).first().textContent();

/** On the Flow page: the request wakes greeter, and the page shows it live. */
async function wakeUpAndWatch(page, label) {
  const greeter = '[data-executor="greeter"]';
  await until(`${label}: greeter shown at zero`, 60_000, async () =>
    (await text(page, `${greeter} [data-testid=ready]`)) === "0" &&
    (await text(page, `${greeter} [data-testid=desired]`)) === "0" &&
    (await text(page, `${greeter} [data-testid=state]`)) === "at zero",
  );
  await until(`${label}: the live feed`, 60_000, async () => (await text(page, "[data-testid=live-status]")) === "live");
  // A reload would lose this mark: the page must change without one.
  await page.evaluate(() => (window.__noReload = true));
  const snippet = await text(page, "[data-testid=client-snippet]");
  assert.match(snippet, /from jina import Client/);
  const answer = runSnippet(snippet);
  await until(`${label}: greeter's replicas go 0 -> 1 in the page`, LONG, async () =>
    (await text(page, `${greeter} [data-testid=ready]`)) === "1",
  );
  const out = await answer;
  assert.match(out, /hello, hello-audited-tagged|hello-audited.*tagged|hello, hello/, `the Flow answered: ${out}`);
  const cold = page.locator(`${greeter} [data-testid=cold-start]`).first();
  await until(`${label}: the cold start with its duration`, 60_000, async () =>
    /^\d+(\.\d+)? (ms|s)$/.test((await cold.locator("[data-testid=cold-duration]").textContent()) ?? ""),
  );
  const reason = await cold.locator("[data-testid=cold-reason]").textContent();
  assert.match(reason, /^Why: .+/, `the cold start names the autoscaler's reason: ${reason}`);
  const decision = await text(page, `${greeter} [data-testid=decision]`);
  assert.match(decision, /0 → 1/, `the decision: ${decision}`);
  await until(`${label}: the Executor's log line`, 60_000, async () =>
    (await page.locator(`${greeter} [data-testid=log-line]`, { hasText: "greeted 1 document(s)" }).count()) > 0,
  );
  const line = await page.locator(`${greeter} [data-testid=log-line]`, { hasText: "greeted 1 document(s)" }).first();
  assert.match(await line.locator(".replica").textContent(), /^greeter-/, "the line names its replica");
  assert.equal(await page.evaluate(() => window.__noReload), true, "the page was not reloaded");
}

/** Scales audit to 2 from the page, confirming, and sees both replicas ready. */
async function scaleFromPage(page, label) {
  const audit = page.locator('[data-executor="audit"]');
  await audit.locator("[data-testid=scale-input]").fill("2");
  await audit.locator("[data-testid=scale-button]").click();
  await page.locator("dialog [data-testid=confirm]").click();
  await until(`${label}: audit scaled to 2`, LONG, async () =>
    (await audit.locator("[data-testid=ready]").textContent()) === "2" &&
    (await audit.locator("[data-testid=desired]").textContent()) === "2",
  );
  await until(`${label}: the graph says 2/2`, 30_000, async () =>
    (await page.locator('[data-node="audit"] text.sub').textContent()) === "2/2 ready",
  );
}

test("jc server: sign in, see the Flow, watch a wake-up from zero, follow its log, scale", { timeout: 900_000 }, async () => {
  const data = join(work, "server");
  const dir = join(work, "project");
  project(dir);
  const token = execFileSync(jc, ["server", "token", "create", "alice", "--data-dir", data], { env })
    .toString()
    .trim()
    .split("\n")
    .pop();
  const port = await freePort();
  const server = start([jc, "server", "--port", String(port), "--data-dir", data, "--drain-timeout", "5"]);
  try {
    const url = `http://127.0.0.1:${port}/`;
    await until("jc server to answer", 60_000, async () => (await fetch(`${url}healthz`)).ok);
    const deployed = JSON.parse(
      execFileSync(jc, ["flow", "deploy", "--json", dir], {
        env: { ...env, JCLOUD_API: url, JINA_AUTH_TOKEN: token },
        timeout: LONG,
      }).toString(),
    );
    assert.equal(deployed.status.phase, "Serving", JSON.stringify(deployed));
    const id = deployed.id;

    for (const scheme of ["light", "dark"]) {
      const ctx = await browser.newContext({ colorScheme: scheme, viewport: { width: 1280, height: 900 } });
      const page = await ctx.newPage();
      const errors = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(url);
      if (scheme === "light") {
        // 1. Signs in: a wrong token is refused, the right one is kept in this tab only.
        await page.fill("#token", "not-a-token");
        await page.click("form[data-testid=signin] button[type=submit]");
        await until("the refusal", 30_000, async () => /not accepted/.test(await text(page, "form .error")));
        await page.fill("#token", token);
        await page.click("form[data-testid=signin] button[type=submit]");
        // 2. Sees the Flow, serving, with its endpoint and its one Executor at zero.
        const row = page.locator(`[data-flow-id="${id}"]`);
        await row.waitFor({ timeout: 60_000 });
        assert.equal(await row.locator("[data-testid=phase]").textContent(), "Serving");
        assert.match(await row.textContent(), new RegExp(deployed.status.endpoints.gateway.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
        await until("1 of 3 at zero", 30_000, async () => /1 of 3/.test(await row.locator("[data-testid=at-zero]").textContent()));
        assert.ok(!page.url().includes(token), "the token is never in the URL");
        assert.equal(await page.evaluate(() => sessionStorage.getItem("zeroflow.token")), token);
        await row.locator("a").first().click();
        // 3-6. A request from jina.Client wakes greeter; the page shows it without a reload.
        await wakeUpAndWatch(page, "jc server");
        // 7. Scales from the page.
        await scaleFromPage(page, "jc server");
      } else {
        // Dark mode: the same page after a sign-in in a new tab (a new session).
        await page.fill("#token", token);
        await page.click("form[data-testid=signin] button[type=submit]");
        await page.locator(`[data-flow-id="${id}"] a`).first().click();
        await until("the history after a new load", 60_000, async () =>
          (await page.locator('[data-executor="greeter"] [data-testid=cold-start]').count()) > 0 &&
          (await text(page, "[data-testid=live-status]")) === "live",
        );
      }
      // The charts have drawn a second of data before the picture, and no toast covers it.
      await page.waitForFunction(() => document.querySelectorAll(".uplot canvas").length >= 9);
      await page.locator(".toast").waitFor({ state: "detached", timeout: 30_000 });
      mkdirSync(shots, { recursive: true });
      // The top of the page down to the woken Executor's section: the graph, the snippet, and
      // greeter's charts, cold start, decision and log.
      const bottom = await page
        .locator('[data-executor="greeter"]')
        .evaluate((el) => el.getBoundingClientRect().bottom + window.scrollY);
      await page.screenshot({
        path: join(shots, `dashboard-flow-${scheme}.png`),
        fullPage: true,
        clip: { x: 0, y: 0, width: 1280, height: Math.ceil(bottom + 12) },
      });
      assert.deepEqual(errors, [], "no errors in the page");
      await ctx.close();
    }
  } catch (e) {
    console.error(server.output().split("\n").slice(-80).join("\n"));
    throw e;
  } finally {
    await stop(server);
  }
});

test("jc flow serve: no sign-in, the wake-up, and scale as the only action", { timeout: 900_000 }, async () => {
  const dir = join(work, "serve-project");
  project(dir);
  const port = await freePort();
  const serve = start([jc, "flow", "serve", join(dir, "flow.yml"), "--dashboard-port", String(port)]);
  try {
    const url = await until("jc flow serve to print its dashboard", LONG, async () => {
      const m = serve.output().match(/Dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (serve.exitCode !== null) throw new Error(`jc flow serve exited: ${serve.output()}`);
      return m?.[1];
    });
    assert.equal(url, `http://127.0.0.1:${port}/`);
    const page = await (await browser.newContext({ viewport: { width: 390, height: 844 } })).newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(url);
    // Straight to the one Flow's page: no sign-in form.
    await page.locator('[data-executor="greeter"]').waitFor({ timeout: 60_000 });
    assert.equal(await page.locator("#token").count(), 0);
    assert.match(await text(page, "[data-testid=note]"), /only scaling applies/);
    for (const a of ["pause", "resume", "restart", "remove"]) {
      assert.equal(await page.locator(`[data-testid=action-${a}]`).count(), 0, `no ${a} on jc flow serve`);
    }
    await wakeUpAndWatch(page, "jc flow serve");
    await scaleFromPage(page, "jc flow serve");
    mkdirSync(shots, { recursive: true });
    await page.locator(".toast").waitFor({ state: "detached", timeout: 30_000 });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: join(shots, "dashboard-phone.png"), fullPage: false });
    assert.deepEqual(errors, [], "no errors in the page");
  } catch (e) {
    console.error(serve.output().split("\n").slice(-80).join("\n"));
    throw e;
  } finally {
    await stop(serve);
  }
});
