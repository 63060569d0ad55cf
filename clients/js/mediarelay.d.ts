// Type declarations for mediarelay.js (mediarelay wire contract v1.1). Hand-written.

/** Close codes named by PROTOCOL.md v1.1. */
export declare const CLOSE_CODES: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  UNSUPPORTED_DATA: 1003;
  INVALID_UTF8: 1007;
  POLICY_VIOLATION: 1008;
  MESSAGE_TOO_BIG: 1009;
  TICKET: 4401;
  IDLE_TIMEOUT: 4402;
  SLOW_CONSUMER: 4408;
}>;

/** Error codes the relay sends (PROTOCOL.md) plus this library's own. */
export type ErrorCode =
  | 'bad_request' | 'forbidden' | 'not_found' | 'too_large' | 'unavailable'
  | 'too_many_subscriptions' | 'rate_limited'
  | 'ticket_invalid' | 'ticket_expired' | 'ticket_revoked' | 'tickets_unavailable'
  // library codes
  | 'bad_frame' | 'bad_message' | 'timeout' | 'aborted' | 'disconnected' | 'closed'
  | 'connect_failed' | 'no_websocket'
  | (string & {});

export declare class MediaRelayError extends Error {
  constructor(code: string, message?: string, extra?: { id?: number; closeCode?: number; details?: unknown });
  readonly name: 'MediaRelayError';
  /** Protocol error code (`not_found`, ...) or library code (`timeout`, `closed`, ...). */
  code: ErrorCode;
  /** The request id the relay's error answered, when there was one. */
  id?: number;
  /** The WebSocket close code, for errors caused by a close. */
  closeCode?: number;
  details?: unknown;
}

/** meta of a binary media frame. */
export interface MediaMeta {
  /** get replies: the request id */
  id?: number;
  /** stream segments: the stream name */
  stream?: string;
  /** stream segments: the sequence number (0 for the init segment) */
  seq?: number;
  key: string;
  size: number;
  /** stream segments: relay unix time in microseconds when the segment became ready */
  ts?: number;
  contentType?: string;
  generation?: string | number;
  [field: string]: unknown;
}

export interface MediaFrame {
  meta: MediaMeta;
  /** A view over the received frame's memory (no copy). */
  payload: Uint8Array;
}

/**
 * Parse one binary media frame (u32 BE meta length, UTF-8 JSON meta, payload) without copying
 * the payload. Throws MediaRelayError `bad_frame` on malformed input.
 */
export declare function parseMediaFrame(data: ArrayBuffer | ArrayBufferView): MediaFrame;

/**
 * EXPORTED FOR THE PLAYER PAGE. The video codec string of an fMP4 init segment
 * (moov/trak/mdia/minf/stbl/stsd): `avc1.PPCCLL` / `avc3.PPCCLL`, `vp09.PP.LL.DD`,
 * `av01.P.LLT.DD`; null when no track has a recognised sample entry.
 */
export declare function findCodec(init: ArrayBuffer | ArrayBufferView): string | null;

export interface Segment {
  stream: string;
  /** 0 for the init segment */
  seq: number;
  key: string;
  size: number;
  ts?: number;
  /** seq === 0 */
  init: boolean;
  meta: MediaMeta;
  /** A view over the received frame's memory (no copy). */
  payload: Uint8Array;
}

export type SubscribeFrom = 'live' | 'start' | number;

/** The minimal WebSocket constructor this library needs (browser WebSocket interface). */
export interface WebSocketLike {
  binaryType: string;
  readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** The ticket, sent as the `ticket` query parameter of the upgrade request. */
  ticket?: string;
  /** WebSocket constructor; defaults to globalThis.WebSocket (Node 20 has none: pass one). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect after unexpected closes (default true). */
  reconnect?: boolean;
  /** First backoff delay in ms (default 250). */
  initialDelay?: number;
  /** Largest backoff delay in ms (default 30000). */
  maxDelay?: number;
  /** Backoff growth per failed attempt (default 2). */
  backoffFactor?: number;
  /** Consecutive failed attempts before giving up (default Infinity). */
  maxRetries?: number;
  /** ms for one connection attempt to open (default 10000; 0: none). */
  connectTimeout?: number;
  /** ms for get/refresh/unsubscribe answers (default 30000; 0: none). */
  requestTimeout?: number;
  /**
   * Supplies a new ticket. Called after close 4401 (`reason` is `ticket_revoked` or
   * `ticket_expired`): return a ticket to reconnect with it, or null/undefined to stay closed.
   * With `autoRefresh`, also called on `expiring` (reason `expiring`) and the result is sent as
   * a `refresh`.
   */
  onTicketExpired?: (reason: string) => string | null | undefined | Promise<string | null | undefined>;
  /** On `expiring`, refresh with a ticket from onTicketExpired('expiring') (default false). */
  autoRefresh?: boolean;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
}

export interface RequestOptions {
  /** ms; overrides ClientOptions.requestTimeout */
  timeout?: number;
  signal?: AbortSignal;
}

export interface ClientEvents {
  open: { reconnected: boolean };
  close: { code: number; reason: string; closingReason: string | null; willReconnect: boolean; final?: boolean };
  reconnecting: { attempt: number; delay: number };
  segment: Segment;
  /**
   * The relay dropped from..to for this slow client, or (`gap: true`) the client found a hole
   * itself: asked for segments the relay no longer has (after a reconnect, or a numeric `from`).
   */
  skipped: { stream: string; from: number; to: number; gap?: boolean };
  expiring: { expiresAt: string };
  closing: { reason: string };
  refreshed: { expiresAt: string };
  unsubscribed: { stream: string; reason?: string };
  error: MediaRelayError | Error;
}

export declare class Subscription implements AsyncIterableIterator<Segment> {
  readonly stream: string;
  readonly from: SubscribeFrom;
  /** Sequence number of the last media segment delivered (init segments excluded). */
  lastSeq: number | null;
  /** Where a resubscribe after a reconnect starts. */
  nextSeq: number | null;
  ended: boolean;
  /** Resolves with the relay's first `subscribed` answer; rejects when the subscribe fails. */
  readonly ready: Promise<{ seq: number }>;
  unsubscribe(): Promise<void>;
  next(): Promise<IteratorResult<Segment, undefined>>;
  return(): Promise<IteratorResult<Segment, undefined>>;
  [Symbol.asyncIterator](): Subscription;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export declare class MediaRelayClient {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  /** The ticket in use (replaced by refresh() or onTicketExpired). */
  ticket: string | undefined;
  readonly state: ClientState;
  readonly connected: boolean;
  readonly subscriptions: Map<string, Subscription>;
  /** The current WebSocket, if any. */
  readonly ws: WebSocketLike | null;

  /** Resolves when open; rejects (`connect_failed`) when the first attempt fails. */
  connect(): Promise<void>;
  /** Close for good; no reconnect. Subscriptions finish. */
  close(code?: number, reason?: string): void;

  /** Fetch one object; rejects with MediaRelayError (`not_found`, `forbidden`, ...). */
  get(key: string, options?: RequestOptions): Promise<MediaFrame>;
  /** Follow a live stream; `from` defaults to `"live"`. Throws `bad_request` if already followed. */
  subscribe(stream: string, options?: { from?: SubscribeFrom; onSegment?: (segment: Segment) => void }): Subscription;
  unsubscribe(stream: string): Promise<void>;
  /** Replace the connection's ticket (same uid). */
  refresh(ticket: string, options?: { timeout?: number }): Promise<{ expiresAt: string }>;

  /** Add a listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): () => void;
  once<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): void;
}

/** Create a client and connect it. */
export declare function connect(url: string, options?: ClientOptions): Promise<MediaRelayClient>;
