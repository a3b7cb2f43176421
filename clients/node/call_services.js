// Calls every driftlm service from Node.js with @grpc/grpc-js, loading only the contracts in
// protos/ (no generated code): what a user of another language does. Prints one JSON object of
// what each service answered. Usage: node call_services.js '{"vocab": "host:port", ...}' MODEL
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const root = path.resolve(__dirname, "..", "..", "protos");
const files = ["vocab", "sampling", "trainer", "inference", "compare", "grpc_predict_v2"].map(
  (name) => `driftlm/v1/${name}.proto`,
);
const definition = loader.loadSync(files, { includeDirs: [root], keepCase: true, longs: String, enums: String, defaults: true });
const api = grpc.loadPackageDefinition(definition);
const [targets, model] = [JSON.parse(process.argv[2]), process.argv[3]];
const insecure = grpc.credentials.createInsecure();
const deadline = () => ({ deadline: Date.now() + 60000 });

function unary(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, deadline(), (error, response) => (error ? reject(error) : resolve(response))),
  );
}

async function status(promise) {
  try {
    await promise;
    return "OK";
  } catch (error) {
    return grpc.status[error.code];
  }
}

async function main() {
  const out = {};
  const vocab = new api.driftlm.v1.VocabService(targets.vocab, insecure);
  out.vocab_versions = (await unary(vocab, "ListVersions", { page_size: 10 })).versions.length;
  out.vocab_unknown = await status(unary(vocab, "GetVersion", { version_id: "v-0000000000000000" }));

  const sampling = new api.driftlm.v1.SamplingService(targets.sampling, insecure);
  const weights = Buffer.alloc(32);
  [0.1, 0.0, 0.6, 0.3].forEach((w, i) => weights.writeDoubleLE(w, 8 * i));
  const drawn = await new Promise((resolve, reject) => {
    const call = sampling.DrawSample(deadline(), (error, response) => (error ? reject(error) : resolve(response)));
    call.write({ weights: { dtype: "D_TYPE_FLOAT64", shape: ["4"], data: weights }, k: "2", seed: "7" });
    call.end();
  });
  out.sampling_indices = [0, 1].map((i) => Number(drawn.indices.data.readBigInt64LE(8 * i)));

  const trainer = new api.driftlm.v1.TrainerService(targets.trainer, insecure);
  out.trainer_runs = (await unary(trainer, "ListRuns", {})).runs.length;

  const inference = new api.driftlm.v1.InferenceService(targets.inference, insecure);
  const filled = await unary(inference, "FillMask", { model: { name: model }, texts: process.argv.slice(4), top_k: 1 });
  out.fill_mask = filled.predictions.map((p) => p.candidates[0].piece);
  const oip = new api.inference.GRPCInferenceService(targets.inference, insecure);
  out.server_live = (await unary(oip, "ServerLive", {})).live;
  out.model_ready = (await unary(oip, "ModelReady", { name: model })).ready;

  const compare = new api.driftlm.v1.CompareService(targets.compare, insecure);
  out.comparisons = (await unary(compare, "ListComparisons", {})).comparisons.length;
  out.comparison_unknown = await status(unary(compare, "GetComparison", { comparison_id: "cmp-0000000000000000" }));
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
