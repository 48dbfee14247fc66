// Validate prometheus-operator resources (ServiceMonitor, PodMonitor, PrometheusRule) in rendered
// manifests against the operator's CRD schemas: kubernetes-validate has no schema for them.
// The npm packages are ESM-only and resolve from the script's folder, so deploy-checks.sh copies this
// file next to its node_modules (.tools/node/) and runs: node .tools/node/validate-crds.mjs FILE...
import fs from "node:fs";
import YAML from "yaml";
import { ServiceMonitor, PodMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { ServiceMonitor, PodMonitor, PrometheusRule };
let checked = 0;
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of YAML.parseAllDocuments(fs.readFileSync(file, "utf8"))) {
    const obj = doc.toJSON();
    if (!obj || obj.apiVersion !== "monitoring.coreos.com/v1") continue;
    const Model = kinds[obj.kind];
    const name = `${file}: ${obj.kind}/${obj.metadata?.name}`;
    if (!Model) {
      console.error(`FAIL ${name}: no schema for this kind`);
      failed += 1;
      continue;
    }
    try {
      new Model(obj).validate();
      checked += 1;
      console.log(`ok   ${name}`);
    } catch (err) {
      failed += 1;
      console.error(`FAIL ${name}: ${err.message}`);
    }
  }
}
console.log(`${checked} prometheus-operator resources valid, ${failed} invalid`);
process.exit(failed ? 1 : 0);
