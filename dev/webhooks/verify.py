"""Verifies webhook deliveries with Standard Webhooks' own Python library, unchanged
from PyPI (`standardwebhooks`, pinned in dev/requirements.txt). Reads a JSON document
on stdin, `{"secret": "whsec_…", "deliveries": [{"headers": {…}, "body": "…"}]}`,
verifies each delivery as a receiver would (signature, and a timestamp within the
library's 5 minutes), and prints `{"library": …, "verified": n}`; exits 1 naming the
first delivery it refuses."""
import json
import sys
from importlib.metadata import version

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main():
    given = json.load(sys.stdin)
    webhook = Webhook(given["secret"])
    for index, delivery in enumerate(given["deliveries"]):
        try:
            webhook.verify(delivery["body"], delivery["headers"])
        except WebhookVerificationError as refused:
            sys.exit(f"delivery {index} ({delivery['headers'].get('webhook-id')}): {refused}")
    print(json.dumps({"library": {"package": "standardwebhooks", "version": version("standardwebhooks")},
                      "verified": len(given["deliveries"])}))


if __name__ == "__main__":
    main()
