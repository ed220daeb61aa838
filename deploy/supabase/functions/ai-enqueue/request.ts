/**
 * request.ts: the chat request body and the small header rules, with
 * ragpool-dispatcher's answers (dispatcher/request.c, docs/DISPATCHER.md).
 *
 * Body: a JSON object with `message` (string, 1..32768 bytes of UTF-8),
 * optional `conversation_id` (string, 1..128 bytes; echoed back) and
 * optional `options` (match_count 1..50, match_threshold -1..1,
 * history_count 0..50, model string 1..200 bytes, max_tokens 1..32768,
 * temperature 0..2; null means "default" and is dropped).  Every problem is
 * collected (at most 16 named) so a client fixing a request sees the whole
 * list at once.
 *
 * The user is the token's `sub`, never the body: `user_id` and `userId`
 * (what the reference design's clients send) are accepted and ignored, so
 * those clients keep working and cannot choose the user.  Any other
 * unknown field is refused (a typo never passes silently).
 */

/** A valid chat request. */
export interface ChatRequest {
  message: string;
  conversationId: string | null;
  /** Only the options actually given (nulls dropped); null when none. */
  options: Record<string, unknown> | null;
}

/** A refused request: HTTP status, error code, message, and for 422 the fields named. */
export interface Refusal {
  status: number;
  code: string;
  message: string;
  fields?: string[];
}

export const MESSAGE_MAX_BYTES = 32768;
const CONVERSATION_ID_MAX_BYTES = 128;
const MAX_PROBLEMS = 16;
const IGNORED_FIELDS = new Set(["user_id", "userId"]);

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** UTF-8 length of s, computed only when it could matter for limit. */
function byteLength(s: string, limit: number): number {
  // A UTF-16 unit is at most 3 UTF-8 bytes (a surrogate pair: 4 for 2).
  return s.length * 3 <= limit ? s.length : utf8.encode(s).length;
}

/** True when v or anything inside it holds a NUL character (Postgres text cannot). */
function hasNul(v: unknown, depth = 0): boolean {
  if (typeof v === "string") return v.includes("\0");
  if (depth > 32 || v === null || typeof v !== "object") return false;
  if (Array.isArray(v)) return v.some((x) => hasNul(x, depth + 1));
  return Object.entries(v).some(([k, x]) => k.includes("\0") || hasNul(x, depth + 1));
}

class Problems {
  readonly fields: string[] = [];
  readonly parts: string[] = [];
  more = false;
  add(name: string, why: string): void {
    if (this.fields.length === MAX_PROBLEMS) {
      this.more = true;
      return;
    }
    const n = name.slice(0, 72);
    this.fields.push(n);
    this.parts.push(`${n}: ${why}`);
  }
}

function checkInt(p: Problems, v: unknown, name: string, min: number, max: number): void {
  if (typeof v !== "number" || !Number.isInteger(v)) p.add(`options.${name}`, "must be an integer");
  else if (v < min || v > max) p.add(`options.${name}`, `must be between ${min} and ${max}`);
}

function checkReal(p: Problems, v: unknown, name: string, min: number, max: number): void {
  if (typeof v !== "number") p.add(`options.${name}`, "must be a number");
  else if (!(v >= min && v <= max)) p.add(`options.${name}`, `must be between ${min} and ${max}`);
}

function checkOptions(p: Problems, opts: Record<string, unknown>): void {
  for (const [key, v] of Object.entries(opts)) {
    if (v === null) continue;
    switch (key) {
      case "match_count":
        checkInt(p, v, key, 1, 50);
        break;
      case "history_count":
        checkInt(p, v, key, 0, 50);
        break;
      case "max_tokens":
        checkInt(p, v, key, 1, 32768);
        break;
      case "match_threshold":
        checkReal(p, v, key, -1, 1);
        break;
      case "temperature":
        checkReal(p, v, key, 0, 2);
        break;
      case "model":
        if (typeof v !== "string" || v.length === 0 || byteLength(v, 200) > 200) {
          p.add(`options.${key}`, "must be a string of 1 to 200 bytes");
        }
        break;
      default:
        p.add(`options.${key}`, "unknown option");
    }
  }
}

/** Parse and validate a chat body: the request, or why it is refused (400/422). */
export function parseChatBody(body: Uint8Array): ChatRequest | Refusal {
  let root: unknown;
  try {
    root = JSON.parse(strictUtf8.decode(body));
  } catch (e) {
    const why = e instanceof SyntaxError ? e.message : "invalid UTF-8";
    return { status: 400, code: "malformed_json", message: `the body is not valid JSON: ${why.slice(0, 160)}` };
  }
  if (root === null || typeof root !== "object" || Array.isArray(root)) {
    return { status: 422, code: "invalid_request", message: "the body must be a JSON object", fields: [] };
  }
  if (hasNul(root)) {
    return { status: 400, code: "malformed_json", message: "the body is not valid JSON: \\u0000 is not allowed" };
  }
  const obj = root as Record<string, unknown>;
  const p = new Problems();
  for (const key of Object.keys(obj)) {
    if (key !== "message" && key !== "conversation_id" && key !== "options" && !IGNORED_FIELDS.has(key)) {
      p.add(key, "unknown field");
    }
  }
  const msg = obj.message;
  if (msg === undefined) p.add("message", "required");
  else if (typeof msg !== "string") p.add("message", "must be a string");
  else if (msg.length === 0 || byteLength(msg, MESSAGE_MAX_BYTES) > MESSAGE_MAX_BYTES) {
    p.add("message", "must be 1 to 32768 bytes");
  }
  const conv = obj.conversation_id;
  if (conv !== undefined && conv !== null) {
    if (
      typeof conv !== "string" || conv.length === 0 ||
      byteLength(conv, CONVERSATION_ID_MAX_BYTES) > CONVERSATION_ID_MAX_BYTES
    ) {
      p.add("conversation_id", "must be a string of 1 to 128 bytes");
    }
  }
  const opts = obj.options;
  if (opts !== undefined && opts !== null) {
    if (typeof opts !== "object" || Array.isArray(opts)) p.add("options", "must be an object");
    else checkOptions(p, opts as Record<string, unknown>);
  }
  if (p.fields.length > 0) {
    return {
      status: 422,
      code: "invalid_fields",
      message: p.parts.join("; ") + (p.more ? "; ..." : ""),
      fields: p.fields,
    };
  }
  let options: Record<string, unknown> | null = null;
  if (opts !== undefined && opts !== null) {
    for (const [k, v] of Object.entries(opts as Record<string, unknown>)) {
      if (v !== null) (options ??= {})[k] = v;
    }
  }
  return {
    message: msg as string,
    conversationId: typeof conv === "string" ? conv : null,
    options,
  };
}

/** True for a `Content-Type` of application/json (parameters allowed). */
export function isJsonContentType(value: string | null): boolean {
  return value !== null && /^ *application\/json *(;.*)?$/i.test(value);
}

/** An Idempotency-Key must be 1..255 visible ASCII characters. */
export function idempotencyKeyValid(key: string): boolean {
  return /^[\x21-\x7e]{1,255}$/.test(key);
}

/** ragpool's namespace for idempotency keys (the dispatcher's, so both give the same ids). */
const IDEMPOTENCY_NS = new Uint8Array([
  0x6f,
  0x1c,
  0x2a,
  0x8e,
  0x53,
  0x0b,
  0x4d,
  0x8a,
  0x9e,
  0x27,
  0xb4,
  0x61,
  0x3c,
  0xd0,
  0x75,
  0x19,
]);

/**
 * The job id for (user, Idempotency-Key): a name-based UUID (version 5,
 * SHA-1) of the namespace, the user id, "\n" and the key -- the same id
 * ragpool-dispatcher computes, so a client may retry through either.
 */
export async function idempotencyJobId(userId: string, key: string): Promise<string> {
  const name = utf8.encode(`${userId}\n${key}`);
  const input = new Uint8Array(IDEMPOTENCY_NS.length + name.length);
  input.set(IDEMPOTENCY_NS, 0);
  input.set(name, IDEMPOTENCY_NS.length);
  const md = new Uint8Array(await crypto.subtle.digest("SHA-1", input));
  md[6] = (md[6] & 0x0f) | 0x50; // version 5
  md[8] = (md[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(md.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}
