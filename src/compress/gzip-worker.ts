/**
 * Worker thread of the parallel gzip compressor: compresses one member at a time and hands the result
 * back. Kept free of imports from the rest of mkbase so that starting it stays cheap.
 */
import { parentPort } from "node:worker_threads";
import { gzipMember, type MemberRequest, type MemberResult } from "./gzip-member.js";

const port = parentPort;
if (port === null) throw new Error("gzip-worker.js must run as a worker thread");
port.on("message", (request: MemberRequest) => {
  const data = gzipMember(Buffer.from(request.input), request.level);
  // Transferred, not copied, when the member starts a buffer of its own. A small one may lie in node's
  // shared allocation pool (slabs of Buffer.poolSize bytes), which must not be taken away: copied.
  const whole = data.buffer as ArrayBuffer;
  const output =
    data.byteOffset === 0 && whole.byteLength > Buffer.poolSize ? whole : new Uint8Array(data).buffer;
  // The input goes back too. Nothing of a member stays behind, so the thread makes no garbage: its
  // collector runs only when ~64 MiB of dead buffers have gathered, and two threads held that each.
  const result: MemberResult = { id: request.id, output, length: data.length, input: request.input };
  port.postMessage(result, [output, request.input]);
});
