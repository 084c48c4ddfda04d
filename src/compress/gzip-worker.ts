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
  // Transfer rather than copy: the member is a fresh buffer nobody else holds.
  const output = (data.buffer as ArrayBuffer).slice(data.byteOffset, data.byteOffset + data.length);
  const result: MemberResult = { id: request.id, output };
  port.postMessage(result, [output]);
});
