// Builds URLs with imgproxy's official Node client for tests/it/compat.rs: reads
// {endpoint, key, salt, cases: [{id, options, info, source}]} as JSON on stdin and prints one
// URL per case, in order, as a JSON array. `source` is "plain" (the image id as a plain
// source) or "base64" (the client's default encoding of the id).
const { generateImageUrl, generateImageInfoUrl } = require("@imgproxy/imgproxy-node");

let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const { endpoint, key, salt, cases } = JSON.parse(input);
  const urls = cases.map(({ id, options, info, source }) => {
    const url = source === "plain" ? { value: id, displayAs: "plain" } : id;
    const generate = info ? generateImageInfoUrl : generateImageUrl;
    return generate({ endpoint, url, key, salt, options });
  });
  process.stdout.write(JSON.stringify(urls));
});
