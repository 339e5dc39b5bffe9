// A Node.js caller of metering.v1.MeteringService: @grpc/grpc-js with the
// TypeScript stubs that `make stubs` generates from proto/ (ts-proto).
//
// It walks through what a calling service does, checks what it gets back, and
// exits 1 if any expectation fails (so CI can run it against a real server):
// create a customer, record usage, go past a hard limit and read the refusal's
// google.rpc details, replay a transaction id, check the balance, preview the
// bill, and call without a token.
//
// Settings (environment):
//   METERING_TARGET          host:port of the service (default 127.0.0.1:50051)
//   METERING_TOKEN           bearer token used for every role not given below
//   METERING_ADMIN_TOKEN     token of a caller with the admin role (UpsertCustomer)
//   METERING_RECORDER_TOKEN  token of a caller with the recorder role (RecordUsage)
//   METERING_READER_TOKEN    token of a caller with the reader role (CheckBalance, EstimateBill)
//   METERING_PLAN            plan to put the new customer on (default pro, of the sample catalog)
//   METERING_METER           a meter with a hard limit on that plan (default ai_tokens)
//   METERING_QUANTITY        quantity of the first event (default 1500)
//   METERING_TLS_CA          PEM file of a CA: use TLS instead of plaintext
//   METERING_SERVICE_CONFIG  gRPC service config JSON (retryPolicy, waitForReady); default
//                            deploy/grpc/service_config.json of this repository
//   METERING_MODE            "walk" (default: the walk above) or "record-loop": record
//                            METERING_EVENTS events one at a time (default 60), one every
//                            METERING_INTERVAL_MS (default 50), each with its own transaction
//                            id, relying on the service config alone to ride out a restart
//   METERING_CUSTOMER        the customer of the record loop (default: a new one)
//   METERING_CALL_TIMEOUT_MS deadline of each call (default 10000)

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";

import {
  type CallOptions,
  type ChannelCredentials,
  type ClientUnaryCall,
  credentials,
  Metadata,
  type ServiceError,
  status as grpcStatus,
} from "@grpc/grpc-js";

import { BadRequest, ErrorInfo, QuotaFailure } from "../gen/google/rpc/error_details";
import { Status } from "../gen/google/rpc/status";
import { EstimateBillRequest, type Money, pricingModelToJSON } from "../gen/metering/v1/billing";
import { UpsertCustomerRequest } from "../gen/metering/v1/customer";
import { ErrorReason, errorReasonToJSON, MeteringServiceClient } from "../gen/metering/v1/metering_service";
import {
  type Balance,
  CheckBalanceRequest,
  EnforcementMode,
  LimitEnforcement,
  RecordUsageRequest,
} from "../gen/metering/v1/usage";

const CALL_TIMEOUT_MS = Number(process.env.METERING_CALL_TIMEOUT_MS || 10_000);

// A unary method of the generated client, in its (request, metadata, options, callback) form.
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

// Calls a unary method with an optional bearer token and a deadline; resolves
// with the response or rejects with the grpc-js ServiceError.
function call<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, token: string | undefined): Promise<Res> {
  const metadata = new Metadata({ waitForReady });
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    method(request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === "number";
}

// The refusal's google.rpc details. The server sends a google.rpc.Status in
// the binary `grpc-status-details-bin` trailer (grpc-js hands it over already
// base64-decoded); each detail is a google.protobuf.Any to unpack by type URL.
interface Details {
  status?: Status;
  errorInfo?: ErrorInfo;
  quotaFailure?: QuotaFailure;
  badRequest?: BadRequest;
}

function readDetails(error: ServiceError): Details {
  const [raw] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!(raw instanceof Buffer)) {
    return {};
  }
  const status = Status.decode(raw);
  const details: Details = { status };
  for (const any of status.details) {
    const typeName = any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1);
    if (typeName === "google.rpc.ErrorInfo") {
      details.errorInfo = ErrorInfo.decode(any.value);
    } else if (typeName === "google.rpc.QuotaFailure") {
      details.quotaFailure = QuotaFailure.decode(any.value);
    } else if (typeName === "google.rpc.BadRequest") {
      details.badRequest = BadRequest.decode(any.value);
    }
  }
  return details;
}

// ErrorInfo.reason is the ErrorReason value name without its prefix.
function reason(value: ErrorReason): string {
  return errorReasonToJSON(value).replace(/^ERROR_REASON_/, "");
}

function codeName(code: number): string {
  return grpcStatus[code] ?? String(code);
}

function money(value: Money | undefined): string {
  return value ? `${value.amount} ${value.currencyCode}` : "(none)";
}

function time(value: Date | undefined): string {
  return value ? value.toISOString() : "(none)";
}

function describeBalance(balance: Balance | undefined): string {
  if (!balance) {
    return "(no balance)";
  }
  const limit = balance.limit ?? "unlimited";
  return `used=${balance.used} limit=${limit} available=${balance.available ?? "unlimited"} percent_used=${balance.percentUsed ?? "-"} approaching_limit=${balance.approachingLimit}`;
}

// Expectations are checked as the walk goes; every failure is printed and the
// process exits 1 at the end, so one run shows every problem at once.
class Expectations {
  checked = 0;
  failed: string[] = [];

  expect(condition: boolean, what: string, got?: unknown): boolean {
    this.checked += 1;
    if (!condition) {
      const detail = got === undefined ? "" : ` (got ${JSON.stringify(got)})`;
      this.failed.push(what + detail);
      console.log(`   FAIL: expected ${what}${detail}`);
    }
    return condition;
  }
}

function env(name: string, fallback?: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value === "" ? fallback : value;
}

function channelCredentials(): { creds: ChannelCredentials; security: string } {
  const caFile = env("METERING_TLS_CA");
  if (caFile) {
    return { creds: credentials.createSsl(readFileSync(caFile)), security: `TLS (CA ${caFile})` };
  }
  return { creds: credentials.createInsecure(), security: "plaintext" };
}

// The repository's gRPC service config: grpc-js then retries UNAVAILABLE, CANCELLED and
// DEADLINE_EXCEEDED with backoff (resending the same request, so the same transaction id).
function serviceConfig(): { config: ServiceConfig; path: string } {
  const path = env("METERING_SERVICE_CONFIG", resolve(__dirname, "../../../../deploy/grpc/service_config.json"))!;
  return { config: JSON.parse(readFileSync(path, "utf8")) as ServiceConfig, path };
}

interface ServiceConfig {
  methodConfig: { waitForReady?: boolean }[];
}

// grpc-js (1.14) reads the config's waitForReady but does not apply it: a call then fails
// fast while the server restarts. So the calls carry it themselves, taken from the config.
let waitForReady = false;

function newClient(target: string, creds: ChannelCredentials): MeteringServiceClient {
  const { config } = serviceConfig();
  waitForReady = config.methodConfig.some((method) => method.waitForReady === true);
  return new MeteringServiceClient(target, creds, { "grpc.service_config": JSON.stringify(config) });
}

// Records events one at a time, each awaited before the next, with no retry of its own:
// every call must succeed, whatever happens to the server meanwhile.
async function recordLoop(): Promise<number> {
  const target = env("METERING_TARGET", "127.0.0.1:50051")!;
  const token = env("METERING_RECORDER_TOKEN", env("METERING_TOKEN"));
  const adminToken = env("METERING_ADMIN_TOKEN", env("METERING_TOKEN"));
  const events = Number(env("METERING_EVENTS", "60"));
  const intervalMs = Number(env("METERING_INTERVAL_MS", "50"));
  const meterSlug = env("METERING_METER", "tokens")!;
  const customerId = env("METERING_CUSTOMER") ?? `node-loop-${randomBytes(6).toString("hex")}`;
  const { creds, security } = channelCredentials();
  const client = newClient(target, creds);
  console.log(`record loop -> ${target} (${security}, service config ${serviceConfig().path}); customer ${customerId}, ${events} events`);
  let failures = 0;
  let slowest = 0;
  try {
    await call(client.upsertCustomer.bind(client), UpsertCustomerRequest.create({ customerId, planSlug: env("METERING_PLAN", "open")! }), adminToken);
    for (let i = 0; i < events; i += 1) {
      const started = Date.now();
      const request = RecordUsageRequest.create({ customerId, meterSlug, quantity: "1", transactionId: `${customerId}-${i}` });
      try {
        const response = await call(client.recordUsage.bind(client), request, token);
        const took = Date.now() - started;
        slowest = Math.max(slowest, took);
        console.log(`event ${i} ok in ${took} ms, duplicate=${response.duplicate}, used=${response.balance?.used}`);
      } catch (error) {
        failures += 1;
        const code = isServiceError(error) ? codeName(error.code) : String(error);
        console.log(`event ${i} FAILED after ${Date.now() - started} ms: ${code}`);
      }
      await new Promise((done) => setTimeout(done, intervalMs));
    }
  } finally {
    client.close();
  }
  console.log(`record loop: ${events - failures} of ${events} events recorded, ${failures} failed, slowest call ${slowest} ms`);
  return failures === 0 ? 0 : 1;
}

async function run(): Promise<number> {
  if (env("METERING_MODE", "walk") === "record-loop") {
    return recordLoop();
  }
  const target = env("METERING_TARGET", "127.0.0.1:50051")!;
  const shared = env("METERING_TOKEN");
  const adminToken = env("METERING_ADMIN_TOKEN", shared);
  const recorderToken = env("METERING_RECORDER_TOKEN", shared);
  const readerToken = env("METERING_READER_TOKEN", shared);
  const planSlug = env("METERING_PLAN", "pro")!;
  const meterSlug = env("METERING_METER", "ai_tokens")!;
  const quantity = env("METERING_QUANTITY", "1500")!;
  // A customer of this run's own, so the walk starts from an empty ledger.
  const customerId = `node-demo-${randomBytes(6).toString("hex")}`;
  const transactionId = `${customerId}-first`;

  const { creds, security } = channelCredentials();
  const client = newClient(target, creds);
  const check = new Expectations();
  console.log(`metering node client -> ${target} (${security}); customer ${customerId}, plan ${planSlug}, meter ${meterSlug}`);

  try {
    // 1. Create the customer (admin role).
    const upserted = await call(
      client.upsertCustomer.bind(client),
      UpsertCustomerRequest.create({ customerId, planSlug }),
      adminToken,
    );
    console.log(`1. UpsertCustomer (admin token): ${upserted.customer?.customerId} on plan ${upserted.customer?.planSlug}, created=${upserted.created}`);
    check.expect(upserted.created, "a new customer (created=true)", upserted.created);
    check.expect(upserted.customer?.planSlug === planSlug, `plan ${planSlug}`, upserted.customer?.planSlug);

    // 2. Record usage (recorder role).
    const recordRequest = RecordUsageRequest.create({
      customerId,
      meterSlug,
      quantity,
      transactionId,
      properties: { source: "node-example" },
      enforcementMode: EnforcementMode.ENFORCEMENT_MODE_ENFORCE_LIMIT,
    });
    const first = await call(client.recordUsage.bind(client), recordRequest, recorderToken);
    const eventId = first.event?.eventId ?? "";
    console.log(`2. RecordUsage (recorder token): ${quantity} ${meterSlug}, transaction ${transactionId} -> event ${eventId}, duplicate=${first.duplicate}, price ${first.event?.priceSlug}`);
    console.log(`   balance: ${describeBalance(first.balance)}`);
    check.expect(!first.duplicate, "the first recording not to be a duplicate", first.duplicate);
    check.expect(first.balance?.used === quantity, `used=${quantity}`, first.balance?.used);
    const available = first.balance?.available;
    if (
      !check.expect(
        first.balance?.limitEnforcement === LimitEnforcement.LIMIT_ENFORCEMENT_HARD && available !== undefined,
        `meter ${meterSlug} to have a hard limit on plan ${planSlug} (set METERING_PLAN and METERING_METER)`,
        first.balance?.limitEnforcement,
      )
    ) {
      return finish(check);
    }

    // 3. One unit more than is available: refused, nothing written, and the
    // details say why in a form a program can act on.
    const overLimit = (BigInt(available!.split(".")[0]) + 1n).toString();
    try {
      await call(
        client.recordUsage.bind(client),
        { ...recordRequest, quantity: overLimit, transactionId: `${customerId}-over` },
        recorderToken,
      );
      check.expect(false, `RESOURCE_EXHAUSTED for ${overLimit} with ${available} available`, "OK");
    } catch (error) {
      if (!isServiceError(error)) {
        throw error;
      }
      console.log(`3. RecordUsage of ${overLimit} (${available} available) -> ${codeName(error.code)}: ${error.details}`);
      const details = readDetails(error);
      const info = details.errorInfo;
      if (info) {
        const metadata = Object.entries(info.metadata)
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([key, value]) => `${key}=${value}`)
          .join(" ");
        console.log(`   ErrorInfo reason=${info.reason} domain=${info.domain}`);
        console.log(`   ErrorInfo metadata: ${metadata}`);
      }
      for (const violation of details.quotaFailure?.violations ?? []) {
        console.log(`   QuotaFailure subject=${violation.subject}: ${violation.description}`);
      }
      check.expect(error.code === grpcStatus.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", codeName(error.code));
      check.expect(info?.reason === reason(ErrorReason.ERROR_REASON_LIMIT_EXCEEDED), "ErrorInfo reason LIMIT_EXCEEDED", info?.reason);
      check.expect(info?.metadata.available === available, `ErrorInfo available=${available}`, info?.metadata.available);
      check.expect(info?.metadata.requested === overLimit, `ErrorInfo requested=${overLimit}`, info?.metadata.requested);
      check.expect((details.quotaFailure?.violations.length ?? 0) > 0, "a QuotaFailure violation");
    }

    // 4. Replay the first event: a retry after a lost answer is safe.
    const replay = await call(client.recordUsage.bind(client), recordRequest, recorderToken);
    console.log(`4. RecordUsage replay of transaction ${transactionId} -> duplicate=${replay.duplicate}, event ${replay.event?.eventId}`);
    check.expect(replay.duplicate, "duplicate=true on the replay", replay.duplicate);
    check.expect(replay.event?.eventId === eventId, `the original event ${eventId}`, replay.event?.eventId);

    // 5. The balance (reader role): the refused and the replayed events added nothing.
    const balances = await call(
      client.checkBalance.bind(client),
      CheckBalanceRequest.create({ customerId, meterSlug }),
      readerToken,
    );
    const balance = balances.balances[0];
    console.log(`5. CheckBalance (reader token): ${meterSlug} ${describeBalance(balance)}, period ends ${time(balance?.periodEndTime)}`);
    check.expect(balance?.used === quantity, `used still ${quantity}`, balance?.used);
    check.expect(balance?.available === available, `available still ${available}`, balance?.available);

    // 6. The bill so far (reader role).
    const bill = await call(client.estimateBill.bind(client), EstimateBillRequest.create({ customerId }), readerToken);
    console.log(`6. EstimateBill (reader token): plan ${bill.planSlug}, period ${time(bill.periodStartTime)} to ${time(bill.periodEndTime)}`);
    for (const line of bill.lines) {
      const model = pricingModelToJSON(line.pricingModel).replace(/^PRICING_MODEL_/, "");
      // Tiered prices carry their breakdown in tiers; the others one unit (or package) amount.
      const rate = line.tiers.length > 0 ? `tiers used ${line.tiers.length}` : `unit ${line.unitAmount}`;
      console.log(
        `   line ${line.meterSlug} (price ${line.priceSlug}, ${model}): quantity ${line.quantity}, included ${line.includedQuantity}, billable ${line.billableQuantity}, ${rate} -> ${money(line.amount)}`,
      );
    }
    console.log(`   subtotal ${money(bill.subtotal)}, credits ${money(bill.credits)}, total ${money(bill.total)}`);
    const line = bill.lines.find((candidate) => candidate.meterSlug === meterSlug);
    check.expect(line?.quantity === quantity, `a bill line for ${meterSlug} with quantity ${quantity}`, line?.quantity);
    check.expect(Boolean(bill.total?.currencyCode), "a total with a currency", bill.total);

    // 7. No token at all.
    try {
      await call(client.checkBalance.bind(client), CheckBalanceRequest.create({ customerId, meterSlug }), undefined);
      check.expect(false, "UNAUTHENTICATED without a token (is the service running with METERING_AUTH_FILE?)", "OK");
    } catch (error) {
      if (!isServiceError(error)) {
        throw error;
      }
      const info = readDetails(error).errorInfo;
      console.log(`7. CheckBalance without a token -> ${codeName(error.code)} (reason ${info?.reason}): ${error.details}`);
      check.expect(error.code === grpcStatus.UNAUTHENTICATED, "UNAUTHENTICATED", codeName(error.code));
      check.expect(info?.reason === reason(ErrorReason.ERROR_REASON_CREDENTIALS_MISSING), "reason CREDENTIALS_MISSING", info?.reason);
    }
  } catch (error) {
    // An RPC that should have worked did not: say which status, with its details.
    if (!isServiceError(error)) {
      throw error;
    }
    const info = readDetails(error).errorInfo;
    const why = info ? ` (reason ${info.reason} ${JSON.stringify(info.metadata)})` : "";
    check.expect(false, `every call to succeed; one answered ${codeName(error.code)}: ${error.details}${why}`);
  } finally {
    client.close();
  }
  return finish(check);
}

function finish(check: Expectations): number {
  if (check.failed.length > 0) {
    console.log(`FAILED: ${check.failed.length} of ${check.checked} expectations`);
    return 1;
  }
  console.log(`OK: all ${check.checked} expectations held`);
  return 0;
}

run().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error("metering node client crashed:", error);
    process.exitCode = 2;
  },
);
