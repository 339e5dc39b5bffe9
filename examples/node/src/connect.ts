// A Node.js caller of metering.v1.MeteringService over HTTP, with the Connect
// protocol (@connectrpc/connect-node) and the messages and service descriptor
// that `make stubs` generates from proto/ (protoc-gen-es).
//
// It walks through what a web backend does, checks what it gets back, and
// exits 1 if any expectation fails (so CI can run it against a real server):
// create a customer, record usage with the transaction id in the
// Idempotency-Key header, replay it, go past a hard limit and read the
// refusal's google.rpc details from the ConnectError (the service answers it
// with HTTP 402; a Connect client reads the code from the body), stream events
// (HTTP/2 only), and get rate limited (the ConnectError's RetryInfo and the
// Retry-After header).
//
// Settings (environment):
//   METERING_HTTP_URL          base URL of the service's HTTP port (default http://127.0.0.1:8080)
//   METERING_HTTP_VERSION      "1.1" (default) or "2" (cleartext HTTP/2 by prior knowledge)
//   METERING_FORMAT            "json" (default) or "binary"
//   METERING_TOKEN             bearer token used for every role not given below
//   METERING_ADMIN_TOKEN       token of a caller with the admin role (UpsertCustomer)
//   METERING_RECORDER_TOKEN    token of a caller with the recorder role (RecordUsage)
//   METERING_READER_TOKEN      token of a caller with the reader role (CheckBalance)
//   METERING_THROTTLED_TOKEN   token of a reader with a small rate limit: call CheckBalance
//                              until RATE_LIMITED (skipped when unset)
//   METERING_PLAN              plan to put the new customer on (default pro, of the sample catalog)
//   METERING_METER             a meter with a hard limit on that plan (default ai_tokens)
//   METERING_QUANTITY          quantity of the first event (default 1500)

import { randomBytes } from "node:crypto";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

import { ErrorInfoSchema, QuotaFailureSchema, RetryInfoSchema } from "../gen-es/google/rpc/error_details_pb";
import { RecordUsageStreamRequestSchema } from "../gen-es/metering/v1/ingest_pb";
import { MeteringService } from "../gen-es/metering/v1/metering_service_pb";
import { RecordUsageRequestSchema } from "../gen-es/metering/v1/usage_pb";

function env(name: string, fallback?: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value === "" ? fallback : value;
}

class Check {
  failures = 0;

  expect(condition: boolean, what: string, got?: unknown): boolean {
    if (!condition) {
      this.failures += 1;
      console.log(`   FAIL: expected ${what}${got === undefined ? "" : `, got ${JSON.stringify(got)}`}`);
    }
    return condition;
  }
}

function headers(token: string | undefined, extra: Record<string, string> = {}): Record<string, string> {
  return token ? { authorization: `Bearer ${token}`, ...extra } : extra;
}

async function run(): Promise<number> {
  const baseUrl = env("METERING_HTTP_URL", "http://127.0.0.1:8080")!;
  const httpVersion = env("METERING_HTTP_VERSION", "1.1") === "2" ? "2" : "1.1";
  const binary = env("METERING_FORMAT", "json") === "binary";
  const token = env("METERING_TOKEN");
  const admin = env("METERING_ADMIN_TOKEN", token);
  const recorder = env("METERING_RECORDER_TOKEN", token);
  const reader = env("METERING_READER_TOKEN", token);
  const throttled = env("METERING_THROTTLED_TOKEN");
  const planSlug = env("METERING_PLAN", "pro")!;
  const meterSlug = env("METERING_METER", "ai_tokens")!;
  const quantity = env("METERING_QUANTITY", "1500")!;
  const customerId = `connect-${randomBytes(6).toString("hex")}`;
  const transport = createConnectTransport({ baseUrl, httpVersion, useBinaryFormat: binary });
  const client: Client<typeof MeteringService> = createClient(MeteringService, transport);
  const check = new Check();
  console.log(
    `metering connect client -> ${baseUrl} (HTTP/${httpVersion}, ${binary ? "binary" : "JSON"}); customer ${customerId}, plan ${planSlug}, meter ${meterSlug}`,
  );

  const upserted = await client.upsertCustomer({ customerId, planSlug }, { headers: headers(admin) });
  console.log(`1. UpsertCustomer: ${upserted.customer?.customerId} on plan ${upserted.customer?.planSlug}, created=${upserted.created}`);
  check.expect(upserted.created, "a new customer (created=true)", upserted.created);

  // The transaction id from the Idempotency-Key header: the body has none.
  const key = `idem-${randomBytes(8).toString("hex")}`;
  const first = await client.recordUsage({ customerId, meterSlug, quantity }, { headers: headers(recorder, { "idempotency-key": key }) });
  console.log(`2. RecordUsage with Idempotency-Key ${key} -> transaction ${first.event?.transactionId}, duplicate=${first.duplicate}, used=${first.balance?.used}`);
  check.expect(first.event?.transactionId === key, `transaction id ${key} from the header`, first.event?.transactionId);
  check.expect(!first.duplicate, "the first recording not to be a duplicate", first.duplicate);
  const replay = await client.recordUsage({ customerId, meterSlug, quantity }, { headers: headers(recorder, { "idempotency-key": key }) });
  console.log(`3. replay -> duplicate=${replay.duplicate}, event ${replay.event?.eventId}`);
  check.expect(replay.duplicate && replay.event?.eventId === first.event?.eventId, "the original event, duplicate=true", replay.duplicate);

  const available = first.balance?.available ?? "0";
  const overLimit = (BigInt(available.split(".")[0]) + 1n).toString();
  try {
    await client.recordUsage(
      { customerId, meterSlug, quantity: overLimit, transactionId: `over-${randomBytes(6).toString("hex")}` },
      { headers: headers(recorder) },
    );
    check.expect(false, `a refusal of ${overLimit} with ${available} available`, "OK");
  } catch (error) {
    const refusal = ConnectError.from(error);
    const [info] = refusal.findDetails(ErrorInfoSchema);
    const [quota] = refusal.findDetails(QuotaFailureSchema);
    console.log(`4. RecordUsage of ${overLimit} (${available} available) -> ${Code[refusal.code]}: ${refusal.rawMessage}`);
    console.log(`   ErrorInfo reason=${info?.reason} available=${info?.metadata.available} requested=${info?.metadata.requested}`);
    console.log(`   QuotaFailure subject=${quota?.violations[0]?.subject}`);
    check.expect(refusal.code === Code.ResourceExhausted, "resource_exhausted", Code[refusal.code]);
    check.expect(info?.reason === "LIMIT_EXCEEDED", "ErrorInfo reason LIMIT_EXCEEDED", info?.reason);
    check.expect(info?.metadata.available === available, `ErrorInfo available=${available}`, info?.metadata.available);
    check.expect((quota?.violations.length ?? 0) > 0, "a QuotaFailure violation");
  }

  if (httpVersion === "2") {
    // Client streaming needs a transport that streams the request body: HTTP/2 here.
    async function* events() {
      for (let i = 0; i < 3; i++) {
        const event = create(RecordUsageRequestSchema, { customerId, meterSlug, quantity: "1", transactionId: `stream-${key}-${i}` });
        yield create(RecordUsageStreamRequestSchema, { events: [event] });
      }
    }
    const summary = await client.recordUsageStream(events(), { headers: headers(recorder) });
    console.log(`5. RecordUsageStream of 3 events -> recorded ${summary.recordedCount}, failed ${summary.failedCount}`);
    check.expect(summary.recordedCount === 3n, "3 events recorded", summary.recordedCount.toString());
  }

  if (throttled) {
    let limited: ConnectError | undefined;
    for (let i = 0; i < 20 && limited === undefined; i++) {
      try {
        await client.checkBalance({ customerId }, { headers: headers(throttled) });
      } catch (error) {
        limited = ConnectError.from(error);
      }
    }
    const [info] = limited?.findDetails(ErrorInfoSchema) ?? [];
    const [retry] = limited?.findDetails(RetryInfoSchema) ?? [];
    const retryAfter = limited?.metadata.get("retry-after");
    console.log(`6. CheckBalance until refused -> ${limited ? Code[limited.code] : "never refused"}: reason=${info?.reason}, RetryInfo ${retry?.retryDelay?.seconds}s+${retry?.retryDelay?.nanos}ns, Retry-After ${retryAfter}`);
    check.expect(limited?.code === Code.ResourceExhausted, "resource_exhausted", limited ? Code[limited.code] : "OK");
    check.expect(info?.reason === "RATE_LIMITED", "ErrorInfo reason RATE_LIMITED", info?.reason);
    check.expect(retry !== undefined, "a RetryInfo detail");
    check.expect(retryAfter !== null && Number(retryAfter) >= 1, "a Retry-After header of whole seconds", retryAfter);
  }

  const balance = await client.checkBalance({ customerId, meterSlug }, { headers: headers(reader) });
  console.log(`7. CheckBalance -> used=${balance.balances[0]?.used} available=${balance.balances[0]?.available}`);

  console.log(check.failures === 0 ? "connect client: all checks passed" : `connect client: ${check.failures} check(s) FAILED`);
  return check.failures === 0 ? 0 : 1;
}

run().then(
  (code) => process.exit(code),
  (error) => {
    console.error("connect client: unexpected error:", error);
    process.exit(1);
  },
);
