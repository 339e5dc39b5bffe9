// Validates ServiceMonitor resources (a JSON array on stdin) with the schema that
// @kubernetes-models/prometheus-operator generates from prometheus-operator's Go API types:
// types, enums, patterns (durations) and required fields; unknown fields are not refused.
// Run by scripts/k8s_validate.py (make k8s-validate).
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const resources = JSON.parse(Buffer.concat(chunks).toString("utf8"));
let failed = 0;
for (const resource of resources) {
  const name = resource?.metadata?.name ?? "(unnamed)";
  try {
    new ServiceMonitor(resource).validate();
    console.log(`INFO servicemonitor/${name} passed against the prometheus-operator ServiceMonitor schema`);
  } catch (error) {
    failed += 1;
    console.log(`ERROR servicemonitor/${name}: ${error.message}`);
  }
}
process.exit(failed === 0 ? 0 : 1);
