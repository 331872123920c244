// Runs a MicroPython script on a 32-bit MicroPython VM (the WebAssembly port from npm).
//   node run32.mjs <package> <heap bytes> <tree> <script>
// <tree> (a folder) is copied into the VM's in-memory filesystem at /tree; the script's output
// goes to stdout. Used by calibrate.py.
import fs from "node:fs";
import path from "node:path";

const [pkg, heap, tree, script] = process.argv.slice(2);
const here = path.dirname(new URL(import.meta.url).pathname);
const { loadMicroPython } = await import(path.join(here, "node_modules", pkg, "micropython.mjs"));
const mp = await loadMicroPython({
  heapsize: parseInt(heap, 10),
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
  linebuffer: true,
});

function copy(src, dst) {
  mp.FS.mkdir(dst);
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    const from = path.join(src, entry.name);
    if (entry.isDirectory()) copy(from, dst + "/" + entry.name);
    else mp.FS.writeFile(dst + "/" + entry.name, fs.readFileSync(from));
  }
}

copy(tree, "/tree");
mp.runPython(fs.readFileSync(script, "utf8"));
