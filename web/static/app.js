// Baton's web UI. Everything the server stores is ciphertext: this page decrypts it here, with
// the account secret this browser received when it was enrolled.

import { h, render } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import htm from "htm";
import * as bc from "./crypto.js";
import { Client, enroll, forgetIdentity, loadIdentity } from "./api.js";
import { HandoffModal, handoffSupported } from "./handoff.js";

const html = htm.bind(h);

/** The pairing code carried in the link's fragment (`#pair=CODE`), which never reaches the server. */
function pairingCodeInUrl() {
  const m = /^#pair=([0-9A-Za-z-]+)$/.exec(location.hash);
  return m ? m[1] : null;
}

function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [screen, ...rest] = h.split("/");
  return { screen: screen || "machines", arg: rest.join("/") };
}

function useRoute() {
  const [r, setR] = useState(route());
  useEffect(() => {
    const on = () => setR(route());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return r;
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

function Pairing({ code, onEnrolled }) {
  const [name, setName] = useState(`browser-${Math.random().toString(36).slice(2, 6)}`);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const me = await enroll(code, name.trim());
      // The code is spent: keep it out of the address bar and the history.
      history.replaceState(null, "", location.pathname + "#/machines");
      onEnrolled(me);
    } catch (err) {
      setError(`${err.message} ${err.code === "not_found" ? "Run `baton pair --browser` again for a new link." : ""}`);
      setBusy(false);
    }
  };
  return html`<main>
    <section class="card" aria-labelledby="pair-title">
      <h2 id="pair-title">Enroll this browser</h2>
      <p class="muted">This link carries a one-time code from <code>baton pair --browser</code>. Enrolling
        gives this browser your account's key, so it can read your sessions; the server never sees it.</p>
      <form onSubmit=${submit}>
        <label for="browser-name">Name for this browser</label>
        <input id="browser-name" type="text" value=${name} required maxlength="64"
          onInput=${(e) => setName(e.currentTarget.value)} />
        <p><button class="primary" type="submit" disabled=${busy || !name.trim()}>
          ${busy ? "Enrolling…" : "Enroll"}</button></p>
        ${error && html`<p class="error" role="alert">${error}</p>`}
      </form>
    </section>
  </main>`;
}

function NotEnrolled() {
  return html`<main>
    <section class="card">
      <h2>This browser is not enrolled</h2>
      <p>On a machine of your account, run <code>baton pair --browser</code> and open the link it prints
        in this browser.</p>
    </section>
  </main>`;
}

function authBadge(auth) {
  const text = { connected_service: "connected service", machine_local: "machine login", missing: "login missing" };
  const cls = auth === "missing" ? "bad" : "ok";
  return html`<span class="badge ${cls}">${text[auth] ?? auth}</span>`;
}

function Machines({ machines }) {
  const list = machines.filter((m) => m.kind !== "browser");
  if (!list.length) return html`<p class="muted">No machines yet: run <code>baton daemon</code> on one.</p>`;
  return html`<div>
    ${list.map(
      (m) => html`<section class="card machine" data-machine=${m.name} aria-label=${`Machine ${m.name}`}>
        <div class="row">
          <h3>${m.name}</h3>
          <span class="badge ${m.online ? "ok" : "bad"} online-state">${m.online ? "online" : "offline"}</span>
          <span class="muted">last seen ${ago(m.last_seen)}</span>
        </div>
        <table>
          <thead><tr><th>Provider</th><th>Installed</th><th>Auth</th><th>Handoff</th></tr></thead>
          <tbody>
            ${m.providers.map(
              (p) => html`<tr>
                <td>${p.name}</td>
                <td>${p.installed ? p.version ?? "yes" : html`<span class="badge bad">not installed</span>`}</td>
                <td>${authBadge(p.auth)}</td>
                <td><span class="badge ${p.handoff === "supported" ? "ok" : p.handoff === "experimental" ? "warn" : "bad"}">${p.handoff}</span></td>
              </tr>`,
            )}
          </tbody>
        </table>
      </section>`,
    )}
  </div>`;
}

function Sessions({ sessions, machines }) {
  const name = (id) => machines.find((m) => m.id === id)?.name ?? id.slice(0, 8);
  if (!sessions.length) return html`<p class="muted">No sessions yet: start one with <code>baton new</code>.</p>`;
  return html`<table class="sessions">
    <thead><tr><th>Session</th><th>Provider</th><th>Mode</th><th>Owner</th><th>Status</th><th class="wide-only">Workspace</th></tr></thead>
    <tbody>
      ${sessions.map(
        (s) => html`<tr data-session=${s.id}>
          <td><a href=${`#/session/${s.id}`}>${s.meta?.title ?? s.id.slice(0, 8)}</a></td>
          <td>${s.provider}</td>
          <td>${s.mode}</td>
          <td>${name(s.owner)}</td>
          <td>${s.status}</td>
          <td class="wide-only"><code>${s.meta?.workspace ?? "(sealed)"}</code></td>
        </tr>`,
      )}
    </tbody>
  </table>`;
}

const ROLE_LABEL = {
  user: "You",
  assistant: "Assistant",
  tool_call: "Tool call",
  tool_result: "Tool result",
  error: "Error",
  system: "System",
  permission: "Permission",
};

function Entry({ e }) {
  return html`<li class=${`entry role-${e.role}`} data-seq=${e.seq}>
    <span class="who">${ROLE_LABEL[e.role] ?? e.role}</span>
    <div class="text">${e.text}</div>
  </li>`;
}

/** The session header's action menu: a button that opens a list of actions (arrow keys move). */
function ActionsMenu({ items }) {
  const [open, setOpen] = useState(false);
  const button = useRef(null);
  const menu = useRef(null);
  useEffect(() => {
    if (open) menu.current?.querySelector("button")?.focus();
  }, [open]);
  const key = (e) => {
    const all = [...(menu.current?.querySelectorAll("button") ?? [])];
    const i = all.indexOf(document.activeElement);
    if (e.key === "Escape") {
      setOpen(false);
      button.current?.focus();
    } else if (e.key === "ArrowDown") {
      e.preventDefault();
      all[(i + 1) % all.length]?.focus();
    } else if (e.key === "ArrowUp") {
      e.preventDefault();
      all[(i - 1 + all.length) % all.length]?.focus();
    }
  };
  return html`<div class="menu-wrap">
    <button type="button" id="session-actions" ref=${button} aria-haspopup="menu" aria-expanded=${open}
      onClick=${() => setOpen(!open)}>Actions ▾</button>
    ${open &&
    html`<ul class="menu" role="menu" ref=${menu} onKeyDown=${key} aria-labelledby="session-actions">
      ${items.map(
        (it) => html`<li role="none"><button type="button" role="menuitem" id=${it.id}
          onClick=${() => {
            setOpen(false);
            it.run();
          }}>${it.label}</button></li>`,
      )}
    </ul>`}
  </div>`;
}

/**
 * Forks `session`: a new synced session on the same machine, whose conversation is the parent's
 * up to its last finished turn (a Direct session's whole, from the provider's files).
 */
async function fork(client, me, session) {
  const { cipher: parent, meta } = session;
  if (!parent || !meta) throw new Error("This session does not decrypt with this account's key.");
  let atSeq = 0;
  if (session.mode !== "direct") {
    for (let after = 0; ; ) {
      const page = await client.get(`/v1/sessions/${session.id}/entries?after=${after}&limit=500`);
      for (const se of page) {
        const body = await parent.openEntry(se.seq, se.epoch, bc.unb64(se.sealed));
        if (body.turn_end) atSeq = se.seq;
      }
      if (page.length < 500) break;
      after = page[page.length - 1].seq;
    }
    if (atSeq === 0) throw new Error("No turn has ended yet, so there is nothing to fork.");
  }
  const id = bc.uuidv7();
  const dataKey = crypto.getRandomValues(new Uint8Array(32));
  const child = new bc.SessionCipher(dataKey, id);
  const record = await client.post("/v1/sessions", {
    id,
    provider: session.provider,
    mode: "synced",
    owner: session.owner,
    sealed_meta: bc.b64(
      await child.sealMeta({
        workspace: meta.workspace,
        provider_ref: null,
        title: meta.title ?? null,
        fork_of: { session: session.id, at_seq: atSeq },
      }),
    ),
    sealed_key: bc.b64(await bc.sealDataKey(me.secret, id, dataKey)),
  });
  dataKey.fill(0);
  return record;
}

/** The actions of a session's header, and the handoff dialog they open. */
function useSessionActions({ client, me, session, machines, cipher, settings }) {
  const [handoff, setHandoff] = useState(false);
  const [note, setNote] = useState(null);
  const items = [];
  if (session && handoffSupported(session, machines)) {
    items.push({ id: "action-handoff", label: "Hand off to another machine…", run: () => setHandoff(true) });
  }
  if (session) {
    items.push({
      id: "action-stop",
      label: "Stop",
      run: () =>
        client.post(`/v1/sessions/${session.id}/stop`).then(
          () => setNote("Stopped: the next message resumes it."),
          (e) => setNote(e.message),
        ),
    });
    items.push({
      id: "action-fork",
      label: "Fork",
      run: () =>
        fork(client, me, session).then(
          (child) => (location.hash = `#/session/${child.id}`),
          (e) => setNote(`Not forked: ${e.message}`),
        ),
    });
    items.push({ id: "action-info", label: "Session info", run: () => (location.hash = `#/info/${session.id}`) });
  }
  const modal =
    handoff && cipher
      ? html`<${HandoffModal} client=${client} session=${session} meta=${session.meta} cipher=${cipher}
          machines=${machines} defaults=${settings} onClose=${() => {
            setHandoff(false);
            document.getElementById("session-actions")?.focus();
          }} />`
      : null;
  return { items, modal, note };
}

/** The handoff dialog's defaults, as stored (sealed) in the account. */
const HANDOFF_DEFAULTS = { workspace: false, conflict: "sibling", ignored_mode: "skip", globs: "", direct: "keep" };

async function loadSettings(client, me) {
  try {
    const rec = await client.get("/v1/settings/handoff");
    return { ...HANDOFF_DEFAULTS, ...(await bc.openRecord(me.secret, "settings", "handoff", bc.unb64(rec.sealed))) };
  } catch (e) {
    if (e.code === "not_found") return { ...HANDOFF_DEFAULTS };
    throw e;
  }
}

/** Settings → Session handoff: the dialog's defaults, sealed into the account for every device. */
function Settings({ client, me, settings, onSaved }) {
  const [v, setV] = useState(settings ?? HANDOFF_DEFAULTS);
  const [state, setState] = useState(null);
  useEffect(() => settings && setV(settings), [settings]);
  const set = (k) => (e) =>
    setV({ ...v, [k]: e.currentTarget.type === "checkbox" ? e.currentTarget.checked : e.currentTarget.value });
  const save = async (e) => {
    e.preventDefault();
    setState("saving");
    try {
      const sealed = await bc.sealRecord(me.secret, "settings", "handoff", v);
      await client.request("PUT", "/v1/settings/handoff", { sealed: bc.b64(sealed) });
      onSaved(v);
      setState("saved");
    } catch (err) {
      setState(`Not saved: ${err.message}`);
    }
  };
  return html`<form onSubmit=${save} aria-labelledby="settings-handoff">
    <h3 id="settings-handoff">Session handoff</h3>
    <p class="muted">Defaults of the handoff dialog, stored encrypted in your account: every machine and
      browser of the account shares them.</p>
    <label class="check"><input id="set-workspace" type="checkbox" checked=${v.workspace} onChange=${set("workspace")} />
      Transfer the workspace</label>
    <label for="set-conflict">If the destination exists</label>
    <select id="set-conflict" value=${v.conflict} onChange=${set("conflict")}>
      <option value="sibling">Copy beside it</option>
      <option value="replace">Replace it (asks again each time)</option>
    </select>
    <label for="set-ignored">Ignored files</label>
    <select id="set-ignored" value=${v.ignored_mode} onChange=${set("ignored_mode")}>
      <option value="skip">Leave behind</option>
      <option value="include">Include all</option>
      <option value="globs">Include only these…</option>
    </select>
    ${v.ignored_mode === "globs" &&
    html`<label for="set-globs">Globs, comma-separated</label>
      <input id="set-globs" type="text" value=${v.globs} onInput=${set("globs")} />`}
    <label for="set-direct">Direct sessions</label>
    <select id="set-direct" value=${v.direct} onChange=${set("direct")}>
      <option value="keep">Keep direct</option>
      <option value="sync">Convert to synced</option>
    </select>
    <p><button class="primary" id="settings-save" type="submit">Save</button>
      <span role="status" id="settings-state"> ${state === "saved" ? "Saved." : state === "saving" ? "Saving…" : state ?? ""}</span></p>
  </form>`;
}

/** A session's id, owner, epoch, workspace, provider id and handoff history. */
function SessionInfo({ client, me, id, session, machines, settings }) {
  const cipher = session?.cipher ?? null;
  const [history, setHistory] = useState([]);
  const name = (mid) => machines.find((m) => m.id === mid)?.name ?? mid.slice(0, 8);
  useEffect(() => {
    if (!session) return;
    client.get(`/v1/sessions/${id}/handoffs`).then(setHistory, () => {});
  }, [id, session?.epoch]);
  const { items, modal, note } = useSessionActions({ client, me, session, machines, cipher, settings });
  if (!session) return html`<p class="muted">Loading the session…</p>`;
  const row = (k, v, vid) => html`<tr><th>${k}</th><td id=${vid}>${v}</td></tr>`;
  return html`<div>
    <div class="row session-head"><${ActionsMenu} items=${items} /><a href=${`#/session/${id}`}>Transcript</a></div>
    ${note && html`<p role="status">${note}</p>`}
    <table class="info">
      <tbody>
        ${row("Id", html`<code>${session.id}</code>`)}
        ${row("Provider", session.provider)}
        ${row("Mode", session.mode)}
        ${row("Owner", name(session.owner), "info-owner")}
        ${row("Epoch", session.epoch, "info-epoch")}
        ${row("Status", session.status)}
        ${row("Workspace", html`<code>${session.meta?.workspace ?? "(sealed)"}</code>`)}
        ${row("Provider session id", html`<code>${session.meta?.provider_ref ?? "none yet"}</code>`)}
      </tbody>
    </table>
    <h3>Handoff history</h3>
    ${history.length === 0
      ? html`<p class="muted">Never handed off.</p>`
      : html`<table class="history">
          <thead><tr><th>When</th><th>From</th><th>To</th><th>Duration</th><th>Bytes</th><th>Result</th></tr></thead>
          <tbody>
            ${history.map((hr) => {
              const first = hr.phases[0]?.started_at ?? hr.created_at;
              const last = hr.phases[hr.phases.length - 1]?.ended_at ?? hr.updated_at;
              return html`<tr data-handoff=${hr.id}>
                <td>${ago(hr.created_at)}</td><td>${name(hr.from)}</td><td>${name(hr.to)}</td>
                <td>${last - first} ms</td><td>${hr.bytes}</td>
                <td>${hr.error ? `${hr.result}: ${hr.error.message}` : hr.result}</td>
              </tr>`;
            })}
          </tbody>
        </table>`}
    ${modal}
  </div>`;
}

/** A session's live transcript and its input box. */
function SessionView({ client, me, id, session, machines, live, settings }) {
  const cipher = session?.cipher ?? null;
  const [entries, setEntries] = useState([]);
  const [queued, setQueued] = useState([]);
  const [text, setText] = useState("");
  const [error, setError] = useState(null);
  const last = useRef(0);

  const add = async (c, sealedList) => {
    const opened = [];
    for (const se of sealedList) {
      if (se.seq <= last.current) continue;
      try {
        const body = await c.openEntry(se.seq, se.epoch, bc.unb64(se.sealed));
        opened.push({ ...body, seq: se.seq });
      } catch {
        opened.push({ role: "error", text: `Entry ${se.seq} does not decrypt with this account's key.`, seq: se.seq });
      }
    }
    if (!opened.length) return;
    opened.sort((a, b) => a.seq - b.seq);
    last.current = Math.max(last.current, opened[opened.length - 1].seq);
    setEntries((l) => [...l, ...opened.filter((o) => !l.some((x) => x.seq === o.seq))]);
    const delivered = new Set(opened.filter((o) => o.input_id).map((o) => o.input_id));
    setQueued((q) => q.filter((x) => !delivered.has(x.id)));
  };

  // Reads what is missing after the last entry shown (at start and after every reconnect).
  const catchUp = async (c) => {
    for (;;) {
      const page = await client.get(`/v1/sessions/${id}/entries?after=${last.current}&limit=500`);
      await add(c, page);
      if (page.length < 500) return;
    }
  };

  // A Direct session's transcript is the provider's files on its owner, read for this request.
  const readDirect = async (c) => {
    const resp = await client.get(`/v1/sessions/${id}/direct-transcript`);
    const list = await c.openJson(
      c.ad(bc.TAGS.direct, new TextEncoder().encode(resp.request)),
      bc.unb64(resp.sealed),
    );
    setEntries(list.map((e, i) => ({ ...e, seq: i + 1 })));
  };

  useEffect(() => {
    if (!session) return;
    let gone = false;
    // A session converted from direct to synced starts over from Baton's own transcript.
    last.current = 0;
    setEntries([]);
    (async () => {
      try {
        const c = session.cipher;
        if (!c) throw new Error("This session does not decrypt with this account's key.");
        client.watch(id);
        if (session.mode === "direct") await readDirect(c);
        else await catchUp(c);
      } catch (e) {
        setError(e.message);
      }
    })();
    return () => {
      gone = true;
    };
  }, [id, !!session?.cipher, session?.mode, session?.owner]);

  useEffect(() => {
    if (!cipher) return;
    const on = (ev) => {
      if (ev.detail.session_id === id) add(cipher, ev.detail.entries);
    };
    addEventListener("baton-entries", on);
    return () => removeEventListener("baton-entries", on);
  }, [cipher]);

  // Only on (re)connecting: the record (and its cipher object) is renewed at every change.
  useEffect(() => {
    if (cipher && live === "live" && session?.mode !== "direct") catchUp(cipher).catch(() => {});
  }, [live, !!cipher]);

  const send = async (ev) => {
    ev.preventDefault();
    const body = text.trim();
    if (!body || !cipher) return;
    const inputId = bc.uuidv7();
    setQueued((q) => [...q, { id: inputId, text: body }]);
    setText("");
    try {
      const sealed = await cipher.sealInput(inputId, body);
      await client.post(`/v1/sessions/${id}/inputs`, { id: inputId, sealed: bc.b64(sealed) });
    } catch (e) {
      setQueued((q) => q.filter((x) => x.id !== inputId));
      setText(body);
      setError(`Not sent: ${e.message}`);
    }
  };

  const { items, modal, note } = useSessionActions({ client, me, session, machines, cipher, settings });
  if (!session) return html`<p class="muted">Loading the session…</p>`;
  const owner = machines.find((m) => m.id === session.owner);
  return html`<div class="session-view">
    <div class="row session-head">
      <${ActionsMenu} items=${items} />
      <span class="badge">${session.provider}</span>
      <span class="badge">${session.mode}</span>
      <span class="badge" id="session-status">${session.status}</span>
      <span class="muted">on <strong id="session-owner">${owner?.name ?? session.owner}</strong></span>
    </div>
    ${note && html`<p role="status">${note}</p>`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${modal}
    <ol class="transcript" aria-live="polite" aria-label="Transcript">
      ${entries.map((e) => html`<${Entry} key=${e.seq} e=${e} />`)}
      ${queued.map(
        (q) => html`<li class="entry role-user queued" key=${q.id}>
          <span class="who">You · queued</span><div class="text">${q.text}</div>
        </li>`,
      )}
    </ol>
    ${session.mode === "direct"
      ? html`<p class="muted" id="direct-note">A Direct session is read from ${owner?.name ?? "its machine"}'s own
          files and steered there. To steer it from here, hand it off with “Convert to synced”.</p>`
      : html`<form class="composer" onSubmit=${send}>
      <label for="message">Message</label>
      <textarea id="message" rows="3" value=${text} onInput=${(e) => setText(e.currentTarget.value)}
        onKeyDown=${(e) => {
          if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e);
        }}></textarea>
      <p><button class="primary" type="submit" disabled=${!cipher || !text.trim()}>Send</button>
        <span class="muted"> Ctrl+Enter sends</span></p>
    </form>`}
  </div>`;
}

/**
 * A session record with its cipher (its data key, unwrapped once with the account secret) and
 * its decrypted metadata; both null when they do not open with this account's key.
 */
async function withMeta(me, s) {
  try {
    const key = await bc.openDataKey(me.secret, s.id, bc.unb64(s.sealed_key));
    const cipher = new bc.SessionCipher(key, s.id);
    return { ...s, cipher, meta: await cipher.openMeta(bc.unb64(s.sealed_meta)) };
  } catch {
    return { ...s, cipher: null, meta: null };
  }
}

function upsert(list, item) {
  const i = list.findIndex((x) => x.id === item.id);
  if (i < 0) return [...list, item];
  const out = list.slice();
  out[i] = item;
  return out;
}

function Shell({ me, onForget }) {
  const client = useMemo(() => new Client(me), [me]);
  const { screen, arg } = useRoute();
  const [live, setLive] = useState("connecting");
  const [machines, setMachines] = useState([]);
  const [sessions, setSessions] = useState([]);
  const [error, setError] = useState(null);
  const [settings, setSettings] = useState(null);
  const heading = useRef(null);

  useEffect(() => {
    let stop = () => {};
    (async () => {
      try {
        setMachines(await client.get("/v1/machines"));
        loadSettings(client, me).then(setSettings, (e) => setError(e.message));
        const list = await client.get("/v1/sessions");
        setSessions(await Promise.all(list.map((s) => withMeta(me, s))));
      } catch (e) {
        setError(e.message);
      }
      stop = client.live(
        async (ev) => {
          if (ev.kind === "machine_changed") setMachines((l) => upsert(l, ev.machine));
          if (ev.kind === "session_changed") {
            const s = await withMeta(me, ev.session);
            setSessions((l) => upsert(l, s));
          }
          if (ev.kind === "entries") dispatchEvent(new CustomEvent("baton-entries", { detail: ev }));
          if (ev.kind === "handoff_progress") dispatchEvent(new CustomEvent("baton-progress", { detail: ev }));
        },
        (state) => {
          setLive(state);
          // Events missed while away: read the lists again once live.
          if (state === "live") {
            client.get("/v1/machines").then(setMachines, () => {});
            client
              .get("/v1/sessions")
              .then((list) => Promise.all(list.map((s) => withMeta(me, s))))
              .then(setSessions, () => {});
          }
        },
      );
    })();
    return () => stop();
  }, [client]);

  useEffect(() => heading.current?.focus(), [screen, arg]);

  const tab = (id, label) =>
    html`<a href=${`#/${id}`} aria-current=${screen === id ? "page" : undefined}>${label}</a>`;
  return html`<div>
    <header class="top">
      <h1>Baton</h1>
      <nav class="tabs" aria-label="Main">${tab("machines", "Machines")} ${tab("sessions", "Sessions")} ${tab("settings", "Settings")}</nav>
      <span class="status-line" role="status" id="live-state">${live === "live" ? "live" : live === "connecting" ? "connecting…" : "offline, reconnecting…"}</span>
      <span class="status-line">${me.name}</span>
    </header>
    <main>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      ${screen === "info"
        ? html`<h2 tabindex="-1" ref=${heading}>Session info</h2>
            <${SessionInfo} client=${client} me=${me} id=${arg} settings=${settings}
              session=${sessions.find((x) => x.id === arg)} machines=${machines} />`
        : screen === "session"
        ? html`<h2 tabindex="-1" ref=${heading}>${sessions.find((x) => x.id === arg)?.meta?.title ?? `Session ${arg.slice(0, 8)}`}</h2>
            <${SessionView} client=${client} me=${me} id=${arg} live=${live} settings=${settings}
              session=${sessions.find((x) => x.id === arg)} machines=${machines} />`
        : screen === "settings"
        ? html`<h2 tabindex="-1" ref=${heading}>Settings</h2>
            <${Settings} client=${client} me=${me} settings=${settings} onSaved=${setSettings} />`
        : screen === "sessions"
          ? html`<h2 tabindex="-1" ref=${heading}>Sessions</h2><${Sessions} sessions=${sessions} machines=${machines} />`
          : html`<h2 tabindex="-1" ref=${heading}>Machines</h2><${Machines} machines=${machines} />`}
      ${screen !== "session" && html`<p><button type="button" onClick=${onForget}>Forget this browser</button></p>`}
    </main>
  </div>`;
}

function App() {
  const [me, setMe] = useState(undefined);
  const code = pairingCodeInUrl();
  useEffect(() => {
    loadIdentity().then(setMe, () => setMe(null));
  }, []);
  if (me === undefined) return html`<p class="boot">Loading Baton…</p>`;
  if (code && !me) return html`<${Pairing} code=${code} onEnrolled=${setMe} />`;
  if (!me) return html`<${NotEnrolled} />`;
  const forget = async () => {
    await forgetIdentity();
    setMe(null);
  };
  return html`<${Shell} me=${me} onForget=${forget} />`;
}

render(html`<${App} />`, document.getElementById("app"));
