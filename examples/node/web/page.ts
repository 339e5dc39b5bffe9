// The browser example: MeteringService over gRPC-Web with @connectrpc/connect-web, from a page
// on another origin than the service (CORS). It records an event, checks the balance, goes past
// the limit, and writes what it got into <pre id="result"> as JSON for a person to read; with
// the `report` parameter it also POSTs that JSON to this page's server at that path, where
// tests/integration/test_browser.py, driving headless Chromium, reads it.
//
// Query parameters: service (the HTTP port's base URL), customer (an existing customer),
// meter (a meter with a hard limit on its plan), quantity (of the first event), token (optional),
// report (optional: a path of the page's own server).

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { ErrorInfoSchema } from "../gen-es/google/rpc/error_details_pb";
import { MeteringService } from "../gen-es/metering/v1/metering_service_pb";

async function walk(params: URLSearchParams): Promise<Record<string, unknown>> {
  const service = params.get("service") ?? "http://127.0.0.1:8080";
  const customerId = params.get("customer") ?? "";
  const meterSlug = params.get("meter") ?? "ai_tokens";
  const quantity = params.get("quantity") ?? "1";
  const token = params.get("token");
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const client = createClient(MeteringService, createGrpcWebTransport({ baseUrl: service }));
  const transactionId = `browser-${crypto.randomUUID()}`;

  const recorded = await client.recordUsage({ customerId, meterSlug, quantity, transactionId }, { headers });
  const balance = await client.checkBalance({ customerId, meterSlug }, { headers });
  const available = balance.balances[0]?.available ?? "0";
  let refusal: Record<string, unknown> = { code: "OK" };
  try {
    const over = (BigInt(available.split(".")[0]) + 1n).toString();
    await client.recordUsage({ customerId, meterSlug, quantity: over, transactionId: `${transactionId}-over` }, { headers });
  } catch (error) {
    const refused = ConnectError.from(error);
    const [info] = refused.findDetails(ErrorInfoSchema);
    refusal = { code: Code[refused.code], reason: info?.reason, metadata: info?.metadata };
  }
  return {
    protocol: "grpc-web",
    recorded: { transactionId: recorded.event?.transactionId, quantity: recorded.event?.quantity, duplicate: recorded.duplicate },
    balance: { used: balance.balances[0]?.used, available },
    refusal,
  };
}

function show(params: URLSearchParams, answer: Record<string, unknown>): void {
  const text = JSON.stringify(answer);
  document.getElementById("result")!.textContent = text;
  const report = params.get("report");
  if (report) {
    void fetch(report, { method: "POST", body: text, headers: { "content-type": "application/json" } });
  }
}

const params = new URLSearchParams(location.search);
walk(params).then(
  (answer) => show(params, { ok: true, ...answer }),
  (error) => {
    const failed = ConnectError.from(error);
    show(params, { ok: false, code: Code[failed.code], message: failed.rawMessage });
  },
);
