/**
 * auth.ts: the caller's identity, from the request's Supabase JWT.
 *
 * Only HS256 tokens signed with the project's JWT secret are accepted
 * (Supabase's legacy symmetric signing; the secret is used as raw bytes, as
 * Supabase does).  The signature is checked with Web Crypto
 * (crypto.subtle.verify, constant time) over the token's first two segments
 * exactly as sent; only then are the claims read.  The rules are
 * ragpool-dispatcher's (common/jwt.c, docs/DISPATCHER.md):
 *
 *   - `alg` must be HS256; `none` and everything else are refused, as is a
 *     header with `crit`;
 *   - `exp` is required, `exp` and `nbf` allow `leewayS` of clock skew;
 *   - `aud` (a string or an array) must contain `audience` unless it is
 *     null; `role` must be one of `roles` unless it is null;
 *   - `sub` is the user id: 1..128 characters of [A-Za-z0-9._:@|-], since it
 *     ends up in SQL parameters, Redis keys and logs.
 *
 * Verified tokens are cached by their exact text (a bounded map, oldest
 * first out) and re-checked against the clock on each use, so a client that
 * reuses its token costs a map lookup.  Tokens are never logged.
 */

/** Why a request is not authenticated: the code is the error code of the JSON answer. */
export class AuthError extends Error {
  constructor(readonly code: "missing_token" | "invalid_token", message: string) {
    super(message);
  }
}

export interface AuthConfig {
  /** The HS256 secret (raw bytes). */
  secret: Uint8Array<ArrayBuffer>;
  /** Required `aud`; null: not checked. */
  audience: string | null;
  /** Accepted `role` values; null: any (or none). */
  roles: string[] | null;
  /** Clock skew allowed for exp/nbf, seconds. */
  leewayS: number;
  /** Longest token accepted, bytes. */
  maxTokenBytes: number;
  /** Verified tokens remembered; 0 = none. */
  cacheSize: number;
}

/** What a verified token says. */
export interface Claims {
  sub: string;
  role: string | null;
  exp: number;
}

interface CacheEntry extends Claims {
  nbf: number | null;
}

const B64URL = /^[A-Za-z0-9_-]+$/;
const SUB = /^[A-Za-z0-9._:@|-]{1,128}$/;
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** base64url without padding to bytes; null when s is not that. */
export function b64urlDecode(s: string): Uint8Array<ArrayBuffer> | null {
  if (!B64URL.test(s) || s.length % 4 === 1) return null;
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  try {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}

/** A JSON object from a base64url segment; null when it is not one. */
function segmentObject(s: string): Record<string, unknown> | null {
  const bytes = b64urlDecode(s);
  if (bytes === null) return null;
  try {
    const v = JSON.parse(strictUtf8.decode(bytes));
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : null;
  } catch {
    return null;
  }
}

/** A NumericDate claim (seconds); null when v is not a usable number. */
function numericDate(v: unknown): number | null {
  if (typeof v !== "number" || !(v > -9e15 && v < 9e15)) return null;
  return Math.trunc(v);
}

/**
 * The token of an `Authorization: Bearer <token>` header value: "Bearer"
 * (any case), blanks, then one word.  Null when the header is absent or has
 * another form.
 */
export function bearerToken(value: string | null): string | null {
  if (value === null) return null;
  const m = /^[ \t]*bearer[ \t]+([^ \t]+)[ \t]*$/i.exec(value);
  return m ? m[1] : null;
}

/** Verifies HS256 tokens with one secret; one instance per process. */
export class HS256Verifier {
  readonly #cfg: AuthConfig;
  readonly #key: Promise<CryptoKey>;
  readonly #cache = new Map<string, CacheEntry>();

  constructor(cfg: AuthConfig) {
    this.#cfg = cfg;
    this.#key = crypto.subtle.importKey(
      "raw",
      cfg.secret,
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["verify"],
    );
  }

  /**
   * The claims of token at time nowS (seconds), or an AuthError
   * ("invalid_token") naming what is wrong.
   */
  async verify(token: string, nowS: number): Promise<Claims> {
    const cached = this.#cache.get(token);
    if (cached !== undefined) {
      this.#checkTimes(cached.exp, cached.nbf, nowS);
      return { sub: cached.sub, role: cached.role, exp: cached.exp };
    }
    if (token.length > this.#cfg.maxTokenBytes) throw invalid("token too large");
    const parts = token.split(".");
    if (parts.length !== 3 || parts.some((p) => p.length === 0)) throw invalid("malformed token");

    const header = segmentObject(parts[0]);
    if (header === null) throw invalid("malformed token header");
    if (typeof header.alg !== "string") throw invalid("token header has no alg");
    if ("crit" in header) throw invalid("token uses critical extensions");
    if (header.alg !== "HS256") throw invalid("token algorithm is not accepted");

    const sig = b64urlDecode(parts[2]);
    if (sig === null) throw invalid("malformed token signature");
    const signed = utf8.encode(`${parts[0]}.${parts[1]}`);
    const ok = sig.length === 32 &&
      await crypto.subtle.verify("HMAC", await this.#key, sig, signed);
    if (!ok) throw invalid("invalid token signature");

    const claims = segmentObject(parts[1]);
    if (claims === null) throw invalid("malformed token payload");
    const exp = numericDate(claims.exp);
    if (exp === null) throw invalid("token has no valid exp");
    let nbf: number | null = null;
    if ("nbf" in claims) {
      nbf = numericDate(claims.nbf);
      if (nbf === null) throw invalid("token has an invalid nbf");
    }
    this.#checkTimes(exp, nbf, nowS);
    if (!this.#audOk(claims.aud)) throw invalid("token audience is not accepted");
    const role = typeof claims.role === "string" ? claims.role : null;
    if (this.#cfg.roles !== null && (role === null || !this.#cfg.roles.includes(role))) {
      throw invalid("token role is not accepted");
    }
    if (typeof claims.sub !== "string" || !SUB.test(claims.sub)) {
      throw invalid("token has no usable subject");
    }
    const entry: CacheEntry = { sub: claims.sub, role, exp, nbf };
    if (this.#cfg.cacheSize > 0) {
      if (this.#cache.size >= this.#cfg.cacheSize) {
        // Maps iterate in insertion order: drop the oldest.
        this.#cache.delete(this.#cache.keys().next().value as string);
      }
      this.#cache.set(token, entry);
    }
    return { sub: entry.sub, role, exp };
  }

  #checkTimes(exp: number, nbf: number | null, nowS: number): void {
    if (nowS > exp + this.#cfg.leewayS) throw invalid("token expired");
    if (nbf !== null && nowS + this.#cfg.leewayS < nbf) throw invalid("token not valid yet");
  }

  #audOk(aud: unknown): boolean {
    const want = this.#cfg.audience;
    if (want === null) return true;
    if (typeof aud === "string") return aud === want;
    return Array.isArray(aud) && aud.some((a) => a === want);
  }
}

function invalid(message: string): AuthError {
  return new AuthError("invalid_token", message);
}
