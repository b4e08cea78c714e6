// Verifies webhook deliveries with Standard Webhooks' own Node library, unchanged from
// npm (`standardwebhooks`, pinned in package.json and its lock). Reads a JSON document
// on stdin, `{"secret": "whsec_…", "deliveries": [{"headers": {…}, "body": "…"}]}`,
// verifies each delivery as a receiver would, and prints `{"library": …, "verified":
// n}`; exits 1 naming the first delivery it refuses.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Webhook } from "standardwebhooks";

const given = JSON.parse(readFileSync(0, "utf8"));
const webhook = new Webhook(given.secret);
given.deliveries.forEach((delivery, index) => {
  try {
    webhook.verify(delivery.body, delivery.headers);
  } catch (refused) {
    console.error(`delivery ${index} (${delivery.headers["webhook-id"]}): ${refused.message}`);
    process.exit(1);
  }
});
const { version } = createRequire(import.meta.url)("standardwebhooks/package.json");
console.log(JSON.stringify({ library: { package: "standardwebhooks", version }, verified: given.deliveries.length }));
