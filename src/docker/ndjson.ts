/**
 * The engine's streamed responses (load, import, build): newline-delimited JSON inside an HTTP 200.
 * A failure arrives as a line with `error`/`errorDetail`, not as a status code, so every line is read.
 */
import type { Readable } from "node:stream";
import { SinkError } from "../errors.js";

export interface EngineMessage {
  readonly stream?: string;
  readonly status?: string;
  readonly progress?: string;
  readonly id?: string;
  readonly error?: string;
  readonly errorDetail?: { readonly message?: string };
  readonly aux?: { readonly ID?: string };
}

/**
 * Reads every message of `response`, calling `onMessage` for each, and resolves with all of them.
 * Rejects with a {@link SinkError} carrying the engine's own words when a line reports an error, when a
 * line is not JSON, or when the connection drops before the response ends.
 */
export async function readEngineMessages(
  response: Readable,
  what: string,
  onMessage: (message: EngineMessage) => void = () => {},
): Promise<EngineMessage[]> {
  const messages: EngineMessage[] = [];
  let pending = "";
  const handle = (line: string): void => {
    if (line.trim() === "") return;
    let message: EngineMessage;
    try {
      message = JSON.parse(line) as EngineMessage;
    } catch (error) {
      throw new SinkError(`the Docker Engine sent an unreadable reply while ${what}: ${line.slice(0, 200)}`, {
        cause: error,
      });
    }
    if (message.error !== undefined || message.errorDetail !== undefined) {
      const detail = message.errorDetail?.message ?? message.error ?? "unknown error";
      throw new SinkError(`the Docker Engine reported an error while ${what}: ${detail.trim()}`);
    }
    messages.push(message);
    onMessage(message);
  };
  try {
    for await (const chunk of response) {
      pending += (chunk as Buffer).toString("utf8");
      let newline: number;
      while ((newline = pending.indexOf("\n")) !== -1) {
        handle(pending.slice(0, newline));
        pending = pending.slice(newline + 1);
      }
    }
  } catch (error) {
    if (error instanceof SinkError) throw error;
    throw new SinkError(`the connection to the Docker Engine broke while ${what}`, {
      cause: error,
      hint: "Check that the engine is still running (`docker version`) and run again.",
    });
  }
  handle(pending);
  return messages;
}

/** The text of a message as a progress line (`stream` output or `status` plus progress). */
export function messageText(message: EngineMessage): string | undefined {
  const text = message.stream ?? [message.status, message.progress].filter(Boolean).join(" ");
  const trimmed = text.trim();
  return trimmed === "" ? undefined : trimmed;
}
