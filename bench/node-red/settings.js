// Node-RED settings for bench/run.sh: the runtime and the flow only.
// No editor, no admin API, no telemetry, quiet logs. bench/run.sh sets:
//   PB_BENCH_NR_PORT      port to listen on (127.0.0.1 only)
//   PB_BENCH_NR_USERDIR   a temporary directory (flows.json is copied there)
//   PB_BENCH_SINK_URL     where the flow's http request node posts (pb_sink)
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: parseInt(process.env.PB_BENCH_NR_PORT || "1880", 10),
    userDir: process.env.PB_BENCH_NR_USERDIR,
    flowFile: "flows.json",
    credentialSecret: false,     // the flow has no credentials

    httpAdminRoot: false,        // no editor and no admin API
    disableEditor: true,
    httpNodeRoot: "/",           // the flow's "http in" node answers /hooks/shop
    apiMaxLength: "5mb",

    // The same whole-request timeout as patchbay's output in the bench (5s).
    httpRequestTimeout: 5000,

    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false },
        modules: { allowInstall: false },
    },
    functionExternalModules: false,

    logging: {
        console: { level: "error", metrics: false, audit: false },
    },
};
