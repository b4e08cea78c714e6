"""`make drill`'s pure parts (dev/drill/answers.py): who answered a 5xx (the service's
envelope, or API Gateway's for an instance the drill killed, one that crashed or timed
out), the retry causes and server errors counted from the attempts, and which 500s fail
the drill."""
import json
import unittest
from email.message import Message

from drill.answers import (KILLED, attempt_kind, retry_causes, server_errors, unexplained_500s)

GATEWAY_500 = json.dumps({"message": "Internal Server Error"}).encode()
GATEWAY_503 = json.dumps({"message": "Service Unavailable"}).encode()
INTERNAL = json.dumps({"errors": [{"code": "internal", "message": "internal error"}]}).encode()
UNAVAILABLE = json.dumps({"errors": [{"code": "unavailable",
                                      "message": "temporarily unavailable; nothing was accepted, retry later"}]}).encode()


def http_headers(**headers):
    """Headers as urllib gives them (case-insensitive), names with dashes."""
    message = Message()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return message


class AttemptKind(unittest.TestCase):
    def test_no_answer_is_a_timeout_and_answers_under_500_are_their_status(self):
        self.assertEqual(attempt_kind(None, {}, b""), "timeout")
        self.assertEqual(attempt_kind(202, http_headers(Content_Type="application/json"), b"{}"), 202)
        self.assertEqual(attempt_kind(429, {}, json.dumps({"errors": [{"code": "rate_limited"}]}).encode()), 429)
        self.assertEqual(attempt_kind(409, {}, b""), 409)

    def test_a_gateway_500_for_an_instance_the_runtime_killed_is_killed(self):
        headers = http_headers(X_Faithful_Instance="api-3", X_Faithful_Outcome="Runtime.ExitError",
                               X_Faithful_Death="killed")
        self.assertEqual(attempt_kind(500, headers, GATEWAY_500), KILLED)
        self.assertEqual(KILLED, "500 killed")

    def test_header_names_are_case_insensitive(self):
        headers = {"x-faithful-outcome": "Runtime.ExitError", "x-faithful-death": "killed"}
        self.assertEqual(attempt_kind(500, headers, GATEWAY_500), KILLED)

    def test_a_gateway_500_for_an_instance_that_died_by_itself_is_a_crash(self):
        headers = http_headers(X_Faithful_Instance="api-3", X_Faithful_Outcome="Runtime.ExitError")
        self.assertEqual(attempt_kind(500, headers, GATEWAY_500), "500 crashed")

    def test_a_gateway_500_the_front_does_not_explain_is_not_taken_for_a_kill(self):
        # No X-Faithful-Outcome (a front that does not say, or no instance ran the event).
        self.assertEqual(attempt_kind(500, http_headers(Apigw_Requestid="r"), GATEWAY_500), "500 gateway")
        self.assertEqual(attempt_kind(500, http_headers(X_Faithful_Outcome="Runtime.InitError"), GATEWAY_500),
                         "500 gateway Runtime.InitError")
        # Killed, but not by a kill the drill asked for (the fleet stopping).
        self.assertEqual(attempt_kind(500, http_headers(X_Faithful_Outcome="Runtime.ExitError",
                                                        X_Faithful_Death="stopped"), GATEWAY_500),
                         "500 gateway Runtime.ExitError (stopped)")
        # The kill's headers on the service's own envelope: the service answered, it is its 500.
        killed_headers = http_headers(X_Faithful_Outcome="Runtime.ExitError", X_Faithful_Death="killed")
        self.assertEqual(attempt_kind(500, killed_headers, INTERNAL), "500 internal")

    def test_the_services_own_5xx_is_its_envelope_code(self):
        self.assertEqual(attempt_kind(500, http_headers(X_Faithful_Instance="api-1"), INTERNAL), "500 internal")
        self.assertEqual(attempt_kind(503, http_headers(Retry_After="1"), UNAVAILABLE), "503 unavailable")
        self.assertEqual(attempt_kind(500, {}, json.dumps({"errors": []}).encode()), "500 service")

    def test_a_gateway_503_is_a_function_timeout(self):
        headers = http_headers(X_Faithful_Outcome="Sandbox.Timedout", X_Faithful_Death="timeout")
        self.assertEqual(attempt_kind(503, headers, GATEWAY_503), "503 function timeout")

    def test_a_body_of_neither_shape_says_so(self):
        self.assertEqual(attempt_kind(502, {}, b"<html>Bad Gateway</html>"), "502 unrecognised")
        self.assertEqual(attempt_kind(500, {}, b""), "500 unrecognised")
        self.assertEqual(attempt_kind(500, {}, b"[1]"), "500 unrecognised")


class Counts(unittest.TestCase):
    ATTEMPTS = ["timeout", 409, 429, 429, KILLED, "500 internal", "500 crashed", "503 unavailable",
                "503 function timeout", 202, 422]

    def test_retry_causes_keep_kills_apart_from_other_500s(self):
        self.assertEqual(retry_causes(self.ATTEMPTS),
                         {"timeout": 1, "409": 1, "429": 2, "killed": 1, "500": 2, "503": 2})
        self.assertEqual(retry_causes([202]),
                         {"timeout": 0, "409": 0, "429": 0, "killed": 0, "500": 0, "503": 0})
        self.assertEqual(retry_causes(["502 unrecognised"])["502"], 1)

    def test_server_errors_count_every_5xx_by_kind(self):
        self.assertEqual(server_errors(self.ATTEMPTS + [KILLED]),
                         {"500 crashed": 1, "500 internal": 1, "500 killed": 2, "503 function timeout": 1,
                          "503 unavailable": 1})

    def test_every_500_but_a_kill_is_unexplained(self):
        self.assertEqual(unexplained_500s(self.ATTEMPTS), ["500 internal", "500 crashed"])
        self.assertEqual(unexplained_500s([KILLED, KILLED, "503 unavailable", "503 function timeout", 202]), [])
        self.assertEqual(unexplained_500s(["500 gateway", "500 unrecognised"]), ["500 gateway", "500 unrecognised"])


if __name__ == "__main__":
    unittest.main()
