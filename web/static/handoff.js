// Handing a session off from the browser: the destination picker (machines that cannot take the
// session are shown disabled with the reason), the workspace options, the plan before anything
// moves, then the phases and the transfer's progress as they happen.

import { h } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";
import * as bc from "./crypto.js";

const html = htm.bind(h);

const PHASE_LABEL = {
  requested: "Requested",
  preflight: "Preflight checks",
  prepare_target: "Preparing the target",
  precopy: "Copying the workspace",
  quiesce_source: "Stopping the source",
  transfer: "Moving the session",
  verify: "Verifying",
  commit: "Committing",
  activate: "Starting on the target",
  done: "Done",
};

/** What the user can do next after a failed handoff, by error code. */
const NEXT_STEP = {
  target_offline: "Start `baton daemon` on the destination, then try again.",
  provider_missing: "Install the provider's CLI on the destination, then try again.",
  provider_unauthenticated: "Log the provider in on the destination (or connect the service), then try again.",
  unsafe_workspace_path: "Move the session's work into a project directory first, or hand off without the workspace.",
  insufficient_space: "Free space on the destination, or leave large ignored files behind.",
  transfer_too_large: "Leave large ignored files behind, or raise the server's transfer limit.",
  target_path_missing: "Create the directory on the destination, or turn on the workspace transfer.",
  conflict: "Pick another conflict policy or destination path.",
  cancelled: "Nothing moved.",
};

/** A daemon's error for people: daemons never name paths to the server, this page knows them. */
function explain(message, workspace) {
  const m = (message ?? "it was aborted").replaceAll("<path>", workspace ?? "the workspace").trim();
  return /[.!?]$/.test(m) ? m : `${m}.`;
}

/** Why `m` cannot take `session`, or null when it can. */
export function ineligible(m, session) {
  if (m.id === session.owner) return "owns the session now";
  if (!m.online) return "offline";
  const p = m.providers.find((x) => x.name === session.provider);
  if (!p || !p.installed) return `${session.provider} is not installed`;
  if (p.auth === "missing") return `${session.provider} is not logged in`;
  if (p.handoff === "unsupported") return `handoff of ${session.provider} sessions is not supported there`;
  return null;
}

/** Whether the session's provider supports handoff at all (as its owner reports it). */
export function handoffSupported(session, machines) {
  const owner = machines.find((m) => m.id === session.owner);
  const p = owner?.providers.find((x) => x.name === session.provider);
  return !p || p.handoff !== "unsupported";
}

/** Why the workspace at `path` cannot travel, or null (the daemon checks again, authoritatively). */
export function unsafeWorkspace(path) {
  if (!path || !path.startsWith("/")) return "the workspace path is not absolute";
  const p = path.replace(/\/+$/, "") || "/";
  if (p === "/") return "the workspace is the root directory";
  if (/^\/(root|home\/[^/]+|Users\/[^/]+)$/.test(p)) return "the workspace is a home directory";
  return null;
}

function mib(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

function Plan({ plan, dest, target }) {
  return html`<section class="plan" aria-label="Plan">
    <h3>Plan</h3>
    <p id="plan-destination">${plan.destination === "absent"
      ? html`<code>${dest}</code> does not exist on ${target}: the workspace is created there.`
      : plan.destination === "empty"
        ? html`<code>${dest}</code> is empty on ${target}: the workspace goes there.`
        : html`<code>${dest}</code> exists on ${target}: ${plan.policy === "replace" ? "it is replaced" : "the workspace lands beside it"}.`}</p>
    <table>
      <tbody>
        <tr><th>Files</th><td id="plan-files">${plan.files} (${mib(plan.bytes)})</td></tr>
        <tr><th>To add</th><td>${plan.add_files} files, ${mib(plan.add_bytes)}</td></tr>
        <tr><th>To change</th><td>${plan.change_files} files, ${mib(plan.change_bytes)}</td></tr>
        <tr><th>To remove</th><td>${plan.remove_files} files, ${mib(plan.remove_bytes)}</td></tr>
        <tr><th>Will travel</th><td id="plan-transfer">${mib(plan.transfer_bytes)}${plan.estimated ? " at most" : ""}</td></tr>
      </tbody>
    </table>
    ${plan.overwritten?.length > 0 &&
    html`<details open><summary>Overwritten on ${target} (${plan.overwritten.length}${plan.lists_truncated ? "+" : ""})</summary>
      <ul class="paths">${plan.overwritten.map((p) => html`<li><code>${p}</code></li>`)}</ul></details>`}
    ${plan.removed?.length > 0 &&
    html`<details><summary>Removed on ${target} (${plan.removed.length}${plan.lists_truncated ? "+" : ""})</summary>
      <ul class="paths">${plan.removed.map((p) => html`<li><code>${p}</code></li>`)}</ul></details>`}
  </section>`;
}

/** Keeps Tab inside `root` and closes on Escape (unless `locked`). */
function useDialog(root, onClose, locked) {
  useEffect(() => {
    const first = root.current?.querySelector("input:not([disabled]), select, button:not([disabled])");
    first?.focus();
    const key = (e) => {
      if (e.key === "Escape" && !locked.current) {
        e.preventDefault();
        onClose();
      }
      if (e.key !== "Tab" || !root.current) return;
      const all = [...root.current.querySelectorAll("input:not([disabled]), select, textarea, button:not([disabled]), summary, a[href]")];
      if (!all.length) return;
      const [a, z] = [all[0], all[all.length - 1]];
      if (e.shiftKey && document.activeElement === a) {
        e.preventDefault();
        z.focus();
      } else if (!e.shiftKey && document.activeElement === z) {
        e.preventDefault();
        a.focus();
      }
    };
    addEventListener("keydown", key);
    return () => removeEventListener("keydown", key);
  }, []);
}

/** The handoff dialog for `session` (with its decrypted `meta` and its `cipher`). */
export function HandoffModal({ client, session, meta, cipher, machines, defaults, onClose }) {
  const candidates = machines.filter((m) => m.kind !== "browser" && m.id !== session.owner);
  const firstOk = candidates.find((m) => !ineligible(m, session));
  const unsafe = unsafeWorkspace(meta?.workspace);
  const [to, setTo] = useState(firstOk?.id ?? null);
  const [workspace, setWorkspace] = useState(!unsafe && (defaults?.workspace ?? false));
  const [conflict, setConflict] = useState(defaults?.conflict ?? "sibling");
  const [ignoredMode, setIgnoredMode] = useState(defaults?.ignored_mode ?? "skip");
  const [globs, setGlobs] = useState(defaults?.globs ?? "");
  const [path, setPath] = useState("");
  const [direct, setDirect] = useState(defaults?.direct ?? "keep");
  const [replaceOk, setReplaceOk] = useState(false);
  const [step, setStep] = useState("options");
  const [record, setRecord] = useState(null);
  const [plan, setPlan] = useState(null);
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const root = useRef(null);
  const locked = useRef(false);
  const handoffId = useRef(null);
  locked.current = step === "running";
  useDialog(root, onClose, locked);

  const target = machines.find((m) => m.id === to);
  const dest = path.trim() || meta?.workspace || "";

  // Follows the handoff: its record (phases, plan, result) and the transfer's progress.
  useEffect(() => {
    if (!handoffId.current || step === "options") return;
    let stop = false;
    const onProgress = (ev) => {
      if (ev.detail.handoff_id === handoffId.current) setProgress(ev.detail.progress);
    };
    addEventListener("baton-progress", onProgress);
    (async () => {
      let opened = plan !== null;
      while (!stop) {
        try {
          const r = await client.get(`/v1/handoffs/${handoffId.current}`);
          setRecord(r);
          if (!opened && r.plan) {
            opened = true;
            const p = await cipher.openJson(
              cipher.ad(bc.TAGS.plan, bc.uuidBytes(r.id)),
              bc.unb64(r.plan),
            );
            setPlan(p);
            if (r.options.await_confirm && r.result === "active") setStep("plan");
          }
          const finished =
            r.result === "aborted" ||
            (r.result === "committed" && (r.error || r.phases.some((p) => p.phase === "done" && p.ended_at)));
          if (finished) {
            setStep(r.result === "committed" && !r.error ? "done" : "failed");
            return;
          }
        } catch (e) {
          setError(e.message);
        }
        await new Promise((r) => setTimeout(r, 300));
      }
    })();
    return () => {
      stop = true;
      removeEventListener("baton-progress", onProgress);
    };
  }, [step === "options"]);

  const start = async (e) => {
    e.preventDefault();
    setError(null);
    if (path.trim() && !path.trim().startsWith("/")) {
      setError(`The destination path must be absolute on ${target?.name}.`);
      return;
    }
    const id = bc.uuidv7();
    const ignored =
      ignoredMode === "globs"
        ? { globs: globs.split(",").map((g) => g.trim()).filter(Boolean) }
        : ignoredMode;
    const sealedValue = { target_path: path.trim() || null, ignored: workspace ? ignored : "skip" };
    const plain = sealedValue.target_path === null && sealedValue.ignored === "skip";
    const sealed = plain
      ? null
      : bc.b64(await cipher.sealJson(cipher.ad(bc.TAGS.options, bc.uuidBytes(id)), sealedValue));
    try {
      await client.post(`/v1/sessions/${session.id}/handoffs`, {
        id,
        to,
        options: { workspace, direct, conflict, await_confirm: workspace },
        sealed_options: sealed,
      });
      handoffId.current = id;
      setStep("running");
    } catch (err) {
      setError(err.message);
    }
  };

  const decide = async (proceed) => {
    try {
      await client.post(`/v1/handoffs/${handoffId.current}/confirm`, { proceed });
      setStep("running");
    } catch (err) {
      setError(err.message);
    }
  };

  const phases = record?.phases ?? [];
  return html`<div class="backdrop">
    <div class="modal" role="dialog" aria-modal="true" aria-labelledby="handoff-title" ref=${root}>
      <h2 id="handoff-title">Hand off to another machine</h2>
      ${step === "options" &&
      html`<form onSubmit=${start}>
        <fieldset>
          <legend>Destination</legend>
          ${candidates.length === 0 && html`<p class="muted">No other machine in this account.</p>`}
          ${candidates.map((m) => {
            const why = ineligible(m, session);
            return html`<label class=${`choice ${why ? "disabled" : ""}`} data-machine=${m.name}>
              <input type="radio" name="to" value=${m.id} checked=${to === m.id} disabled=${!!why}
                onChange=${() => setTo(m.id)} />
              ${m.name} ${why && html`<span class="reason">(${why})</span>`}
            </label>`;
          })}
        </fieldset>
        <label class="check">
          <input id="transfer-workspace" type="checkbox" checked=${workspace} disabled=${!!unsafe}
            onChange=${(e) => setWorkspace(e.currentTarget.checked)} />
          <span>Transfer the workspace${unsafe && html` <span class="reason">(${unsafe})</span>`}</span>
        </label>
        ${workspace &&
        html`<div class="indent">
          <label for="conflict">If the destination exists</label>
          <select id="conflict" value=${conflict} onChange=${(e) => setConflict(e.currentTarget.value)}>
            <option value="sibling">Copy beside it (…-handoff)</option>
            <option value="replace">Replace it</option>
          </select>
          <label for="ignored">Ignored files (.gitignore)</label>
          <select id="ignored" value=${ignoredMode} onChange=${(e) => setIgnoredMode(e.currentTarget.value)}>
            <option value="skip">Leave behind</option>
            <option value="include">Include all</option>
            <option value="globs">Include only these…</option>
          </select>
          ${ignoredMode === "globs" &&
          html`<label for="globs">Globs, comma-separated</label>
            <input id="globs" type="text" value=${globs} placeholder=".env, *.local"
              onInput=${(e) => setGlobs(e.currentTarget.value)} />`}
        </div>`}
        <label for="target-path">Path on ${target?.name ?? "the destination"} (optional)</label>
        <input id="target-path" type="text" value=${path} placeholder=${meta?.workspace ?? ""}
          onInput=${(e) => setPath(e.currentTarget.value)} />
        ${session.mode === "direct" &&
        html`<fieldset>
          <legend>On the destination, the session</legend>
          <label class="choice"><input type="radio" name="direct" value="keep" checked=${direct === "keep"}
            onChange=${() => setDirect("keep")} /> Keep direct (the provider's files stay the truth)</label>
          <label class="choice"><input type="radio" name="direct" value="sync" checked=${direct === "sync"}
            onChange=${() => setDirect("sync")} /> Convert to synced (Baton keeps the transcript)</label>
        </fieldset>`}
        ${error && html`<p class="error" role="alert">${error}</p>`}
        <div class="row buttons">
          <button type="button" onClick=${onClose}>Cancel</button>
          <button class="primary" id="handoff-continue" type="submit" disabled=${!to}>
            ${workspace ? "Review the plan" : "Hand off"}</button>
        </div>
      </form>`}
      ${step === "plan" &&
      html`<div>
        <${Plan} plan=${plan} dest=${dest} target=${target?.name} />
        ${conflict === "replace" && plan.destination === "exists" &&
        html`<label class="check warn">
          <input id="confirm-replace" type="checkbox" checked=${replaceOk}
            onChange=${(e) => setReplaceOk(e.currentTarget.checked)} />
          <span>Replace <code>${dest}</code> on ${target?.name}: the files listed above are overwritten or removed.</span>
        </label>`}
        ${error && html`<p class="error" role="alert">${error}</p>`}
        <div class="row buttons">
          <button type="button" onClick=${() => decide(false)}>Cancel</button>
          <button class="primary" id="handoff-confirm" type="button"
            disabled=${conflict === "replace" && plan.destination === "exists" && !replaceOk}
            onClick=${() => decide(true)}>Confirm</button>
        </div>
      </div>`}
      ${(step === "running" || step === "done" || step === "failed") &&
      html`<div>
        <ol class="phases" aria-label="Phases" aria-live="polite">
          ${phases.map(
            (p) => html`<li class=${`phase ${p.ended_at ? (p.ok ? "ok" : "bad") : "now"}`} data-phase=${p.phase}>
              <span aria-hidden="true">${p.ended_at ? (p.ok ? "✓" : "✗") : "…"} </span>
              ${PHASE_LABEL[p.phase] ?? p.phase}
              ${p.ended_at && html`<span class="muted"> ${p.ended_at - p.started_at} ms</span>`}
            </li>`,
          )}
        </ol>
        ${progress && step === "running" &&
        html`<div class="progress">
          <progress max=${progress.bytes_total || 1} value=${progress.bytes_done}></progress>
          <span class="muted"> ${progress.files_done}/${progress.files_total} files, ${mib(progress.bytes_done)} of ${mib(progress.bytes_total)}</span>
        </div>`}
        ${step === "done" &&
        html`<p id="handoff-result" class="ok" role="status">Handed off: the session now runs on ${target?.name}.</p>`}
        ${step === "failed" &&
        html`<div id="handoff-result" class="error" role="alert">
          <p>The handoff did not happen: ${explain(record?.error?.message, meta?.workspace)}</p>
          <p>${NEXT_STEP[record?.error?.code] ?? "The session stays where it was; try again once the cause is fixed."}</p>
        </div>`}
        <div class="row buttons">
          <button type="button" onClick=${onClose} disabled=${step === "running"}>Close</button>
        </div>
      </div>`}
    </div>
  </div>`;
}
