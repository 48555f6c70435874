// Small DOM helpers: elements are built with text nodes only (never innerHTML), so nothing a
// Flow or an Executor prints can become markup.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined | null>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v as EventListener);
    } else if (v === true) {
      el.setAttribute(k, "");
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, ...children);
  return el;
}

export function append(el: Element, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** "3 s", "5 min", "2 h 10 min", "4 d". */
export function age(fromIso: string, now = Date.now()): string {
  const t = Date.parse(fromIso);
  if (Number.isNaN(t)) return "?";
  return duration(Math.max(0, now - t));
}

export function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return m % 60 ? `${hr} h ${m % 60} min` : `${hr} h`;
  return `${Math.floor(hr / 24)} d`;
}

/** "850 ms", "2.31 s". */
export function ms(v: number): string {
  return v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(2)} s`;
}

export function clock(t: number): string {
  return new Date(t).toLocaleTimeString(undefined, { hour12: false });
}

/** A button that copies `text`, saying so for a moment. */
export function copyButton(text: string, label = "Copy"): HTMLButtonElement {
  const b = h("button", { type: "button", class: "copy", title: `Copy ${text}` }, label);
  b.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      b.textContent = "Copied";
    } catch {
      // Clipboard access needs a secure context: select the text for the user instead.
      const r = document.createRange();
      const target = b.previousElementSibling;
      if (target) {
        r.selectNodeContents(target);
        const sel = window.getSelection();
        sel?.removeAllRanges();
        sel?.addRange(r);
      }
      b.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => (b.textContent = label), 1500);
  });
  return b;
}

/** Asks before an action: resolves true when confirmed. */
export function confirmDialog(title: string, body: string, confirmLabel: string): Promise<boolean> {
  return new Promise((resolve) => {
    const dlg = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title),
      h("p", {}, body),
    );
    const done = (ok: boolean) => {
      dlg.close();
      dlg.remove();
      resolve(ok);
    };
    const cancel = h("button", { type: "button", "data-testid": "cancel" }, "Cancel");
    const ok = h("button", { type: "button", class: "danger", "data-testid": "confirm" }, confirmLabel);
    cancel.addEventListener("click", () => done(false));
    ok.addEventListener("click", () => done(true));
    dlg.addEventListener("cancel", (e) => {
      e.preventDefault();
      done(false);
    });
    append(dlg, h("div", { class: "buttons" }, cancel, ok));
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}

/** A short message at the bottom of the screen. */
export function toast(text: string, kind: "ok" | "error" = "ok"): void {
  const t = h("div", { class: `toast ${kind}`, role: "status" }, text);
  document.body.append(t);
  setTimeout(() => t.remove(), kind === "error" ? 8000 : 4000);
}
