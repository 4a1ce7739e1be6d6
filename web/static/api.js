// The browser's side of Baton's API: its identity (kept in IndexedDB, keys non-extractable),
// signed-challenge login, REST calls and the live WebSocket, which reconnects by itself.

import * as bc from "./crypto.js";

const PROTOCOL_VERSION = 1;
const DB_NAME = "baton";
const STORE = "kv";
const IDENTITY = "identity";

function idb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function kv(mode, f) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const req = f(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}

/** This browser's enrolment, or null. */
export function loadIdentity() {
  return kv("readonly", (s) => s.get(IDENTITY)).then((v) => v ?? null);
}

function saveIdentity(identity) {
  return kv("readwrite", (s) => s.put(identity, IDENTITY));
}

/** Forgets this browser's enrolment (its keys go with it). */
export function forgetIdentity() {
  return kv("readwrite", (s) => s.delete(IDENTITY));
}

/** An error from the server, with its stable code and its message for people. */
export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function call(method, path, body, token) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (token) headers.authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError("unreachable", `The server cannot be reached (${e.message}). Check that it is running.`, 0);
  }
  const text = await resp.text();
  const json = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    throw new ApiError(json?.code ?? "http", json?.message ?? `HTTP ${resp.status}`, resp.status);
  }
  return json;
}

/** Enrols this browser in an account with the pairing code from `baton pair --browser`. */
export async function enroll(codeText, name) {
  const code = bc.parsePairingCode(codeText);
  const me = await bc.generateIdentity();
  const id = await bc.pairingId(code);
  const resp = await call("POST", `/v1/pairings/${id}/claim`, {
    machine: { name, sign_pk: bc.b64(me.signPk), box_pk: bc.b64(me.boxPk), kind: "browser" },
  });
  const secret = await bc.openPairingSecret(code, bc.unb64(resp.sealed_secret));
  const identity = {
    accountId: resp.account_id,
    machineId: resp.machine_id,
    name,
    signKey: me.sign.privateKey,
    boxKey: me.box.privateKey,
    secret: await bc.secretKey(secret),
  };
  secret.fill(0);
  await saveIdentity(identity);
  return identity;
}

/** A logged-in connection to the server as this browser. */
export class Client {
  constructor(identity) {
    this.me = identity;
    this.token = null;
    this.ws = null;
    /** Sessions whose transcript entries this page follows (sent again after a reconnect). */
    this.watched = new Set();
  }

  /** Follows `sessionId`'s transcript entries on the live connection too. */
  watch(sessionId) {
    if (this.watched.has(sessionId)) return;
    this.watched.add(sessionId);
    this.subscribe(sessionId);
  }

  subscribe(sessionId) {
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "subscribe", session_id: sessionId, entries: true }));
    }
  }

  async login() {
    const challenge = await call("POST", "/v1/auth/challenge", { machine_id: this.me.machineId });
    const nonce = bc.unb64(challenge.nonce);
    const signature = await bc.signChallenge(this.me.signKey, nonce, this.me.machineId);
    const resp = await call("POST", "/v1/auth/token", {
      machine_id: this.me.machineId,
      nonce: bc.b64(nonce),
      signature: bc.b64(signature),
    });
    this.token = resp.token;
  }

  async request(method, path, body) {
    if (!this.token) await this.login();
    try {
      return await call(method, path, body, this.token);
    } catch (e) {
      if (e.status !== 401) throw e;
      await this.login();
      return call(method, path, body, this.token);
    }
  }

  get(path) {
    return this.request("GET", path);
  }

  post(path, body) {
    return this.request("POST", path, body ?? {});
  }

  /** Follows the account's events; `onState` hears "connecting", "live" or "offline". */
  live(onEvent, onState) {
    let ws = null;
    let closed = false;
    let delay = 500;
    const connect = async () => {
      if (closed) return;
      onState("connecting");
      try {
        if (!this.token) await this.login();
      } catch {
        return retry();
      }
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      ws = new WebSocket(`${proto}//${location.host}/v1/ws?token=${encodeURIComponent(this.token)}`);
      this.ws = ws;
      ws.onopen = () => {
        ws.send(JSON.stringify({ type: "hello", role: "client", protocol: PROTOCOL_VERSION, providers: [] }));
        ws.send(JSON.stringify({ type: "subscribe", session_id: null, entries: false }));
        for (const id of this.watched) this.subscribe(id);
      };
      ws.onmessage = (m) => {
        const frame = JSON.parse(m.data);
        if (frame.type === "welcome") {
          delay = 500;
          onState("live");
        } else if (frame.type === "event") {
          onEvent(frame.event);
        }
      };
      ws.onclose = () => {
        if (closed) return;
        // A token may have expired meanwhile: log in again before the next attempt.
        this.token = null;
        retry();
      };
    };
    const retry = () => {
      onState("offline");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
    connect();
    return () => {
      closed = true;
      ws?.close();
    };
  }
}
