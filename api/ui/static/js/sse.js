// Server-Sent Events over fetch(). EventSource cannot send an Authorization header, so the stream is read
// as a byte stream and parsed here, per the HTML standard's event-stream rules; after a dropped connection
// it reconnects with Last-Event-ID, so no event is missed or repeated.

import {ApiError, authHeaders, url} from "./api.js";

/** Incremental parser: feed() text chunks as they come; onEvent({type, data, id}) per dispatched event. */
export class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
    this.lastEventId = "";
    this.retry = null;
  }

  reset() {
    this.type = "";
    this.data = [];
    this.hasData = false;
  }

  feed(text) {
    this.buffer += text;
    let start = 0;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer.slice(start));
      if (!match) break;
      const end = start + match.index;
      // A lone \r at the very end may be the first half of \r\n: wait for the next chunk.
      if (match[0] === "\r" && end + 1 === this.buffer.length) break;
      this.line(this.buffer.slice(start, end));
      start = end + match[0].length;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return;  // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") { this.data.push(value); this.hasData = true; }
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  dispatch() {
    if (this.hasData) {
      this.onEvent({type: this.type || "message", data: this.data.join("\n"), id: this.lastEventId});
    }
    this.reset();
  }
}

/**
 * Follow `path`'s stream until close() or `isFinished()` says the stream ended for good (the job reached a
 * status after which the server closes it). onEvent gets {type, data (parsed JSON), id}; onState gets
 * "open", "reconnecting" or "closed"; a refused stream (4xx) calls onError and stops.
 */
export function followStream(path, {onEvent, onState = () => {}, onError = () => {}, isFinished = () => false,
                                    lastEventId = ""}) {
  let controller = null;
  let stopped = false;
  let last = lastEventId;
  let retryMs = 2000;

  async function connectOnce() {
    controller = new AbortController();
    const headers = {Accept: "text/event-stream", ...authHeaders()};
    if (last) headers["Last-Event-ID"] = last;
    const response = await fetch(url(path), {headers, signal: controller.signal, cache: "no-store"});
    if (!response.ok) {
      const payload = await response.json().catch(() => null);
      throw new ApiError(response.status, payload);
    }
    onState("open");
    const parser = new SSEParser((event) => {
      last = event.id || last;
      let data = event.data;
      try { data = JSON.parse(event.data); } catch { /* not JSON: passed on as text */ }
      onEvent({type: event.type, data, id: event.id});
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      parser.feed(value);
      if (parser.retry) retryMs = parser.retry;
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await connectOnce();
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        // The key, the job or the cursor was refused: reconnecting would be refused again.
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
          onError(err);
          onState("closed");
          return;
        }
      }
      if (stopped) return;
      if (isFinished()) { onState("closed"); return; }
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  })();

  return {
    close() {
      stopped = true;
      if (controller) controller.abort();
    },
    get lastEventId() { return last; },
  };
}
