// Baton's envelope in the browser, with WebCrypto only: the same layouts as the `baton-crypto`
// crate (see its docs), so the browser reads what daemons seal and the server sees ciphertext.
//   symmetric:      0x01 ‖ nonce(12) ‖ ciphertext ‖ tag(16), AES-256-GCM, AD = the record's identity
//   to a public key: 0x02 ‖ ephemeral X25519 pk(32) ‖ nonce(12) ‖ ciphertext ‖ tag(16), key =
//                   HKDF-SHA256(X25519(eph, recipient), salt = empty,
//                               info = "baton/seal-to/v1" ‖ eph_pk ‖ recipient_pk)

const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();

const V_SYMMETRIC = 0x01;
const V_TO_PUBLIC_KEY = 0x02;
const SEAL_TO_INFO = enc.encode("baton/seal-to/v1");
const PAIRING_ID_INFO = enc.encode("baton/pairing/id/v1");
const PAIRING_BOX_INFO = enc.encode("baton/pairing/box/v1");
const PAIRING_AD_TAG = enc.encode("baton.pairing.v1");
const SESSION_KEY_WRAP_INFO = enc.encode("baton/session-key-wrap/v1");
const SESSION_KEY_AD = enc.encode("baton.session-key.v1");
const ACCOUNT_RECORD_INFO = enc.encode("baton/account-record/v1");
const ACCOUNT_RECORD_AD = enc.encode("baton.account-record.v1");
const AUTH_TAG = enc.encode("baton-auth-v1\0");
/** Record tags bound into a session record's associated data. */
export const TAGS = {
  entry: enc.encode("baton.entry.v1"),
  meta: enc.encode("baton.meta.v1"),
  input: enc.encode("baton.input.v1"),
  options: enc.encode("baton.handoff-options.v1"),
  workspace: enc.encode("baton.workspace-outcome.v1"),
  plan: enc.encode("baton.workspace-plan.v1"),
  direct: enc.encode("baton.direct-transcript.v1"),
};
// PKCS#8 header of a raw X25519 private key (RFC 8410): WebCrypto imports private keys only so.
const X25519_PKCS8_PREFIX = unhex("302e020100300506032b656e04220420");
const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** Thrown when an envelope does not open: wrong key, wrong record identity, or tampering. */
export class OpenError extends Error {}

/** Lowercase hex of bytes. */
export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Bytes of a hex string. */
export function unhex(s) {
  if (s.length % 2 !== 0 || /[^0-9a-fA-F]/.test(s)) throw new Error(`not hex: ${s}`);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Standard base64 (as `Bytes` and `Sealed` are in the API's JSON). */
export function b64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** Bytes of standard base64. */
export function unb64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** The parts, one after another. */
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The 16 bytes of a UUID (ids of sessions, machines, handoffs). */
export function uuidBytes(id) {
  return unhex(id.replaceAll("-", ""));
}

/** A new id as the daemons make them (UUID version 7: time-ordered, then random). */
export function uuidv7() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  const ms = BigInt(Date.now());
  for (let i = 0; i < 6; i++) b[i] = Number((ms >> BigInt(8 * (5 - i))) & 0xffn);
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = hex(b);
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

/** Big-endian u64 of a number or bigint. */
export function u64be(n) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n));
  return out;
}

/** HKDF-SHA256 with an empty salt; `info` is the concatenation of its parts. */
export async function hkdf(ikm, infoParts, length = 32) {
  // The account secret is kept as a non-extractable HKDF key; tests pass raw bytes.
  const key =
    ikm instanceof CryptoKey ? ikm : await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: concat(...infoParts) },
    key,
    length * 8,
  );
  return new Uint8Array(bits);
}

async function aesKey(raw, usage) {
  return subtle.importKey("raw", raw, "AES-GCM", false, [usage]);
}

/** Seals `plaintext` under a 32-byte key with `ad` bound (random nonce unless given: tests only). */
export async function seal(key, ad, plaintext, nonce = crypto.getRandomValues(new Uint8Array(12))) {
  const ct = await subtle.encrypt(
    { name: "AES-GCM", iv: nonce, additionalData: ad },
    await aesKey(key, "encrypt"),
    plaintext,
  );
  return concat(Uint8Array.of(V_SYMMETRIC), nonce, new Uint8Array(ct));
}

async function decrypt(key, ad, body) {
  if (body.length < 12 + 16) throw new OpenError("envelope is too short");
  try {
    const pt = await subtle.decrypt(
      { name: "AES-GCM", iv: body.subarray(0, 12), additionalData: ad },
      await aesKey(key, "decrypt"),
      body.subarray(12),
    );
    return new Uint8Array(pt);
  } catch {
    throw new OpenError("the envelope does not open with this key and record identity");
  }
}

/** Opens what `seal` (or the crate's `seal`) made. */
export async function open(key, ad, sealed) {
  if (sealed[0] !== V_SYMMETRIC) throw new OpenError("not a symmetric envelope");
  return decrypt(key, ad, sealed.subarray(1));
}

/** An X25519 private key from its 32 raw bytes (extractable, so its public half can be read). */
export async function x25519Private(raw) {
  return subtle.importKey("pkcs8", concat(X25519_PKCS8_PREFIX, raw), "X25519", true, [
    "deriveBits",
  ]);
}

/** The raw public key of an X25519 or Ed25519 private key (from its JWK). */
export async function publicOf(privateKey) {
  const jwk = await subtle.exportKey("jwk", privateKey);
  return unb64(jwk.x.replaceAll("-", "+").replaceAll("_", "/") + "=".repeat((4 - (jwk.x.length % 4)) % 4));
}

async function x25519(privateKey, publicRaw) {
  const pub = await subtle.importKey("raw", publicRaw, "X25519", false, []);
  const shared = new Uint8Array(
    await subtle.deriveBits({ name: "X25519", public: pub }, privateKey, 256),
  );
  // An all-zero secret means a low-order public key: anyone could compute it.
  if (shared.every((b) => b === 0)) throw new OpenError("X25519 public key has low order");
  return shared;
}

/** Seals to an X25519 public key; `ephSecret` and `nonce` are for test vectors only. */
export async function sealTo(recipientPk, ad, plaintext, ephSecret, nonce) {
  const eph = await x25519Private(ephSecret ?? crypto.getRandomValues(new Uint8Array(32)));
  const ephPk = await publicOf(eph);
  const key = await hkdf(await x25519(eph, recipientPk), [SEAL_TO_INFO, ephPk, recipientPk]);
  const inner = await seal(key, ad, plaintext, nonce);
  return concat(Uint8Array.of(V_TO_PUBLIC_KEY), ephPk, inner.subarray(1));
}

/** Opens what `sealTo` (or the crate's `seal_to`) made, with the recipient's private key. */
export async function openFrom(recipientKey, ad, sealed) {
  if (sealed[0] !== V_TO_PUBLIC_KEY) throw new OpenError("not an envelope sealed to a key");
  if (sealed.length < 1 + 32 + 12 + 16) throw new OpenError("envelope is too short");
  const ephPk = sealed.subarray(1, 33);
  const recipientPk = await publicOf(recipientKey);
  const key = await hkdf(await x25519(recipientKey, ephPk), [SEAL_TO_INFO, ephPk, recipientPk]);
  return decrypt(key, ad, sealed.subarray(33));
}

/** The 16 bytes of a pairing code as a person or a link gives it (Crockford base32). */
export function parsePairingCode(text) {
  const clean = text
    .toUpperCase()
    .replace(/[\s-]/g, "")
    .replaceAll("I", "1")
    .replaceAll("L", "1")
    .replaceAll("O", "0");
  if (clean.length !== 26) throw new Error("a pairing code has 26 characters (letters and digits)");
  const out = new Uint8Array(16);
  let acc = 0;
  let bits = 0;
  let filled = 0;
  for (const c of clean) {
    const v = CROCKFORD.indexOf(c);
    if (v < 0) throw new Error("unexpected character in the pairing code (use 0-9 and A-Z without U)");
    acc = ((acc << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      if (filled < 16) out[filled++] = (acc >> bits) & 0xff;
    }
  }
  return out;
}

/** What the server knows a pairing by: HKDF of the code, never the code. */
export async function pairingId(code) {
  return hex(await hkdf(code, [PAIRING_ID_INFO], 16));
}

/** The account secret as a key that derives other keys and can never be read back. */
export async function secretKey(raw) {
  return subtle.importKey("raw", raw, "HKDF", false, ["deriveBits"]);
}

/** The X25519 public key a pairing's secret is sealed to (what the crate derives from the code). */
export async function pairingBoxPk(code) {
  return hex(await publicOf(await x25519Private(await hkdf(code, [PAIRING_BOX_INFO]))));
}

/** Opens the account secret a machine sealed for whoever holds `code`. */
export async function openPairingSecret(code, sealed) {
  const boxKey = await x25519Private(await hkdf(code, [PAIRING_BOX_INFO]));
  const ad = concat(PAIRING_AD_TAG, await hkdf(code, [PAIRING_ID_INFO], 16));
  const secret = await openFrom(boxKey, ad, sealed);
  if (secret.length !== 32) throw new OpenError("the sealed account secret is not 32 bytes");
  return secret;
}

/** A new browser identity: Ed25519 to sign login challenges, X25519 for secrets sealed to it. */
export async function generateIdentity() {
  const sign = await subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const box = await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
  return {
    sign,
    box,
    signPk: new Uint8Array(await subtle.exportKey("raw", sign.publicKey)),
    boxPk: new Uint8Array(await subtle.exportKey("raw", box.publicKey)),
  };
}

/** The login signature over the server's challenge (the crate's `auth_message`). */
export async function signChallenge(signKey, nonce, machineId) {
  const msg = concat(AUTH_TAG, nonce, uuidBytes(machineId));
  return new Uint8Array(await subtle.sign({ name: "Ed25519" }, signKey, msg));
}

/** Opens a session's data key, sealed under the account secret's wrap key. */
export async function openDataKey(accountSecret, sessionId, sealed) {
  const wrap = await hkdf(accountSecret, [SESSION_KEY_WRAP_INFO]);
  return open(wrap, concat(SESSION_KEY_AD, uuidBytes(sessionId)), sealed);
}

/** Seals a session's data key under the account secret's wrap key. */
export async function sealDataKey(accountSecret, sessionId, dataKey, nonce) {
  const wrap = await hkdf(accountSecret, [SESSION_KEY_WRAP_INFO]);
  return seal(wrap, concat(SESSION_KEY_AD, uuidBytes(sessionId)), dataKey, nonce);
}

function recordAd(kind, id) {
  return concat(ACCOUNT_RECORD_AD, enc.encode(kind), Uint8Array.of(0), enc.encode(id));
}

/** Seals an account-level record (settings, connected services) as JSON. */
export async function sealRecord(accountSecret, kind, id, value) {
  const key = await hkdf(accountSecret, [ACCOUNT_RECORD_INFO]);
  return seal(key, recordAd(kind, id), enc.encode(JSON.stringify(value)));
}

/** Opens an account-level record sealed with the same kind and id. */
export async function openRecord(accountSecret, kind, id, sealed) {
  const key = await hkdf(accountSecret, [ACCOUNT_RECORD_INFO]);
  return JSON.parse(new TextDecoder().decode(await open(key, recordAd(kind, id), sealed)));
}

/** A session's records, sealed with its data key and bound to the session's id. */
export class SessionCipher {
  constructor(dataKey, sessionId) {
    this.key = dataKey;
    this.session = uuidBytes(sessionId);
  }

  ad(tag, ...rest) {
    return concat(tag, this.session, ...rest);
  }

  async openJson(ad, sealed) {
    return JSON.parse(new TextDecoder().decode(await open(this.key, ad, sealed)));
  }

  /** Seals the session's metadata. */
  sealMeta(meta) {
    return this.sealJson(this.ad(TAGS.meta), meta);
  }

  async sealJson(ad, value) {
    return seal(this.key, ad, enc.encode(JSON.stringify(value)));
  }

  /** A transcript entry at (seq, epoch). */
  openEntry(seq, epoch, sealed) {
    return this.openJson(this.ad(TAGS.entry, u64be(seq), u64be(epoch)), sealed);
  }

  /** Seals a message typed for the session (its id is bound, so it cannot be replayed as another). */
  sealInput(inputId, text) {
    return seal(this.key, this.ad(TAGS.input, uuidBytes(inputId)), enc.encode(text));
  }

  /** The session's metadata (title, workspace, …). */
  openMeta(sealed) {
    return this.openJson(this.ad(TAGS.meta), sealed);
  }
}
