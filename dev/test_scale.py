"""`make scale`'s pure parts (dev/scale.py): the load plan from a factor, schedules,
percentiles, the reference evaluation it compares the members with (time-relative ops
included), the comparisons (members, replayed events, stored users, time moves), what a
hot key is, the final line and the checks."""
import hashlib
import threading
import time
import unittest

import scale
from drill.audiences import duration_ms, matches, replay
from live import quantile

NOW = 1_780_000_000_000  # epoch ms


def at(ms_before_now):
    return scale.iso(NOW - ms_before_now)


class Plan(unittest.TestCase):
    def test_the_default_factor_is_ten_upserts_a_second_in_the_contracts_shape(self):
        plan = scale.load_plan(0.001, 180)
        self.assertEqual(plan["upserts_per_s"], 10.0)
        self.assertTrue(plan["within_emulator_knee"])
        self.assertEqual(plan["heavy"]["rate_per_s"], 3.0)
        self.assertEqual(plan["light"]["rate_per_s"], 7.0)
        # Each request costs its workspace's rate-limit counter 1 unit (a lease, opening
        # its second or not): 0.9 requests/s a workspace at 1 unit/s, as if it had one
        # shard; light ones keep to half that.
        self.assertAlmostEqual(plan["limits"]["requests_per_workspace_per_s"], 0.9)
        self.assertEqual(plan["light"]["workspaces"], 16)
        self.assertAlmostEqual(plan["light"]["rate_per_workspace_per_s"], 0.4375)
        self.assertEqual(plan["heavy"]["audiences"], 100)
        self.assertEqual(plan["heavy"]["edge_users"], 100)  # 100,000 in a minute × 0.001
        self.assertEqual(plan["import"]["planned_users"], 10_000)
        self.assertEqual(plan["time_moves"]["per_hour"], 1_000)
        self.assertEqual(plan["limits"], {"write_units_per_key_per_s": 1.0, "read_units_per_key_per_s": 3.0,
                                          "put_events_per_s": 10.0, "requests_per_workspace_per_s": 0.9})

    def test_the_import_is_paced_to_its_hottest_key_and_sends_what_fits_in_the_phase(self):
        plan = scale.load_plan(0.001, 180)["import"]
        self.assertAlmostEqual(plan["rate_per_s"], 0.45)  # 90 % of 1 unit/s, 2 units a user
        self.assertEqual(plan["users"], 81)
        self.assertEqual(plan["batch_users"], 1)
        self.assertEqual(plan["whole_import_s"], 22_222)  # rates scale, durations do not
        faster = scale.load_plan(0.001, 180, import_rate=10)["import"]
        self.assertEqual((faster["rate_per_s"], faster["users"]), (10, 1_800))
        self.assertEqual(scale.load_plan(0.001, 5000, import_rate=10)["import"]["users"], 10_000)

    def test_rates_and_counts_follow_the_factor_durations_do_not(self):
        small, large = scale.load_plan(0.001, 60), scale.load_plan(0.01, 60)
        self.assertAlmostEqual(large["upserts_per_s"], 10 * small["upserts_per_s"])
        self.assertEqual(large["light"]["workspaces"], 100)  # 9,999 × 0.01: each at 0.7/s, as on AWS
        self.assertAlmostEqual(large["light"]["rate_per_workspace_per_s"], 0.7)
        self.assertEqual(large["heavy"]["edge_users"], 1_000)
        self.assertEqual(large["import"]["batch_users"], 10)
        self.assertEqual(large["import"]["whole_import_s"], small["import"]["whole_import_s"])
        self.assertFalse(large["within_emulator_knee"])
        self.assertEqual(scale.load_plan(0.00001, 60)["limits"]["put_events_per_s"], 1.0)  # never under 1

    def test_a_light_workspace_stays_a_light_one_at_any_factor(self):
        for factor in (0.0001, 0.001, 0.005, 0.1):
            plan = scale.load_plan(factor, 60)
            self.assertGreaterEqual(plan["light"]["workspaces"], 10)
            self.assertLess(plan["light"]["rate_per_workspace_per_s"], plan["heavy"]["rate_per_s"])
            self.assertLessEqual(plan["light"]["rate_per_workspace_per_s"],
                                 0.5 * plan["limits"]["requests_per_workspace_per_s"] + 1e-9)

    def test_a_bad_factor_or_length_is_refused(self):
        for factor, seconds in ((0, 60), (-1, 60), (0.001, 0)):
            with self.assertRaises(ValueError):
                scale.load_plan(factor, seconds)

    def test_a_schedule_is_steady_and_bounded(self):
        offsets = scale.schedule(0.7, 20, offset=0.1)
        self.assertEqual(len(offsets), 14)
        self.assertAlmostEqual(offsets[0], 0.1)
        self.assertAlmostEqual(offsets[1] - offsets[0], 1 / 0.7)
        self.assertEqual(len(scale.schedule(3, 180)), 540)
        self.assertEqual(scale.schedule(0, 10), [])

    def test_a_share_picks_evenly(self):
        self.assertEqual([i for i in range(40) if scale.picked(i, 0.1)], [9, 19, 29, 39])
        self.assertEqual(sum(scale.picked(i, 0.039683) for i in range(1000)), 39)
        self.assertTrue(all(scale.picked(i, 1.0) for i in range(5)))

    def test_the_heavy_workspace_has_100_audiences_ten_of_them_time_relative_and_every_op(self):
        rules = scale.heavy_rules()
        self.assertEqual(len(rules), 100)
        text = repr(rules)
        self.assertEqual(sum(1 for r in rules.values() if "within_last" in repr(r)), 10)
        for op in ("eq", "ne", "in", "not_in", "exists", "not_exists", "gt", "gte", "lt", "lte", "contains",
                   "starts_with", "ends_with", "within_last", "not_within_last", "'not'", "'any'", "'all'", "path"):
            self.assertIn(op, text)

    def test_a_light_user_flips_one_time_in_ten_and_some_leave_a_window_by_time(self):
        plan = scale.load_plan(0.001, 180)["light"]
        bodies = [scale.light_body(f"u{i}", i, plan, NOW) for i in range(100)]
        self.assertEqual(sum(flip for _, flip, _ in bodies), 10)
        moving = [(body, edge) for body, _, edge in bodies if edge]
        self.assertEqual(len(moving), 3)
        body, edge = moving[0]
        self.assertEqual(edge, NOW + scale.LEAD_S * 1000)
        recent = scale.LIGHT_RULES["recent"]
        self.assertTrue(matches(recent, body["traits"], NOW))
        self.assertFalse(matches(recent, body["traits"], edge + 1))
        still = next(b for b, _, e in bodies if not e)
        self.assertFalse(matches(recent, still["traits"], NOW))


class Pacing(unittest.TestCase):
    def test_a_pacer_spaces_calls_by_its_rate_from_any_thread(self):
        pacer = scale.Pacer(20)
        started = time.monotonic()
        threads = [threading.Thread(target=pacer.wait) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertGreaterEqual(time.monotonic() - started, 4 / 20 - 0.01)  # five slots, 50 ms apart
        time.sleep(0.2)  # idle: no credit is saved up
        started = time.monotonic()
        pacer.wait()
        pacer.wait()
        self.assertGreaterEqual(time.monotonic() - started, 1 / 20 - 0.01)

    def test_an_urgent_caller_goes_before_those_waiting(self):
        pacer = scale.Pacer(10)
        order = []
        pacer.wait()

        def call(name, urgent):
            pacer.wait(urgent)
            order.append(name)

        normal = [threading.Thread(target=call, args=(f"n{i}", False)) for i in range(3)]
        for t in normal:
            t.start()
        time.sleep(0.02)
        urgent = threading.Thread(target=call, args=("u", True))
        urgent.start()
        for t in normal + [urgent]:
            t.join()
        self.assertEqual(order[0], "u")
        self.assertEqual(sorted(order[1:]), ["n0", "n1", "n2"])

    def test_the_edges_sit_in_the_middle_of_phase_2(self):
        self.assertEqual(scale.edge_offset(180), 60)
        self.assertEqual(scale.edge_offset(120), 30)
        self.assertEqual(scale.edge_offset(20), 5)
        self.assertEqual(scale.edge_offset(600), 60)

    def test_only_an_answer_that_may_have_been_accepted_is_ambiguous(self):
        self.assertEqual([s for s in (None, 202, 207, 400, 409, 422, 429, 500, 502, 503, 504) if scale.ambiguous(s)],
                         [None, 409, 500, 502, 504])

    def test_a_request_whose_earlier_attempt_may_have_been_applied_stays_open(self):
        self.assertIsNone(scale.outcome([None, 503]))
        self.assertIsNone(scale.outcome([409, 429]))
        self.assertIsNone(scale.outcome([502, 400]))
        self.assertEqual(scale.outcome([None, 202]), 202)
        self.assertEqual(scale.outcome([503, 429, 503]), 503)
        self.assertEqual(scale.outcome([422]), 422)

    def test_backoff_grows_and_is_capped(self):
        for attempt, (low, high) in ((1, (0.25, 0.5)), (2, (0.5, 1.0)), (5, (4.0, 8.0)), (12, (4.0, 8.0))):
            waits = [scale.backoff(attempt) for _ in range(50)]
            self.assertTrue(all(low <= w <= high for w in waits), (attempt, min(waits), max(waits)))


class Percentiles(unittest.TestCase):
    def test_nearest_rank_at_or_above(self):
        values = list(range(1, 101))
        self.assertEqual(quantile(values, 0.5), 51)
        self.assertEqual(quantile(values, 0.99), 100)
        self.assertEqual(quantile(values, 1.0), 100)
        self.assertEqual(quantile([3, 1, 2], 0.5), 2)
        self.assertEqual(quantile([7.26], 0.99), 7.3)
        self.assertIsNone(quantile([], 0.5))

    def test_latency_is_accepted_to_arrived_in_ms(self):
        self.assertEqual(scale.latency([(10.0, 10.25), (20.0, 20.5), (30.0, 31.0)]),
                         {"p50_ms": 500.0, "p99_ms": 1000.0, "max_ms": 1000.0})
        self.assertEqual(scale.latency([]), {"p50_ms": None, "p99_ms": None, "max_ms": None})


class ReferenceEvaluation(unittest.TestCase):
    def test_durations(self):
        self.assertEqual(duration_ms("P1DT2H30M"), (24 * 60 + 150) * 60_000)
        self.assertEqual(duration_ms("PT90S"), 90_000)
        self.assertEqual(duration_ms("P3650D"), 3650 * 86_400_000)
        for bad in ("P", "PT", "P1W", "P1Y", "1D", "P1DT"):
            with self.assertRaises(ValueError):
                duration_ms(bad)

    def test_within_last_and_not_within_last_move_with_now(self):
        fields = {"signupDate": at(59_000)}
        within = {"field": "signupDate", "op": "within_last", "value": "PT1M"}
        before = {"field": "signupDate", "op": "not_within_last", "value": "PT1M"}
        self.assertTrue(matches(within, fields, NOW))
        self.assertFalse(matches(before, fields, NOW))
        self.assertFalse(matches(within, fields, NOW + 2000))
        self.assertTrue(matches(before, fields, NOW + 2000))

    def test_a_future_date_is_neither_within_nor_before_and_a_non_date_is_false(self):
        future = {"signupDate": scale.iso(NOW + 5000)}
        for op in ("within_last", "not_within_last"):
            rule = {"field": "signupDate", "op": op, "value": "P1D"}
            self.assertFalse(matches(rule, future, NOW))
            self.assertFalse(matches(rule, {"signupDate": "yesterday"}, NOW))
            self.assertFalse(matches(rule, {"signupDate": 5}, NOW))

    def test_offsets_compare_as_instants(self):
        rule = {"field": "renewedAt", "op": "gt", "value": "2026-05-17T14:00:00Z"}
        self.assertTrue(matches(rule, {"renewedAt": "2026-05-17T16:00:01+02:00"}))
        self.assertFalse(matches(rule, {"renewedAt": "2026-05-17T16:00:00+02:00"}))

    def test_a_missing_field_matches_not_exists_alone(self):
        for op, value in (("eq", 1), ("ne", 1), ("in", [1]), ("not_in", [1]), ("exists", None), ("gt", 1),
                          ("contains", "a"), ("within_last", "P1D"), ("not_within_last", "P1D")):
            rule = {"field": "x", "op": op, **({} if value is None else {"value": value})}
            self.assertFalse(matches(rule, {}, NOW), op)
        self.assertTrue(matches({"field": "x", "op": "not_exists"}, {}, NOW))
        self.assertTrue(matches({"not": {"field": "x", "op": "eq", "value": 1}}, {}, NOW))

    def test_ops_types_paths_and_case(self):
        fields = {"email": "Jane@ACME.io", "plan": "pro", "seats": 12, "tags": ["beta", 1], "flag": True,
                  "address": {"city": "Lisbon"}}
        cases = [
            ({"field": "email", "op": "ends_with", "value": "@acme.IO"}, True),
            ({"field": "email", "op": "eq", "value": "jane@acme.io"}, True),
            ({"field": "plan", "op": "eq", "value": "PRO"}, False),  # only email ignores case
            ({"field": "plan", "op": "not_in", "value": ["free", "trial"]}, True),
            ({"field": "seats", "op": "gte", "value": 12.0}, True),
            ({"field": "seats", "op": "lt", "value": "13"}, False),  # a number against a string
            ({"field": "tags", "op": "contains", "value": "beta"}, True),
            ({"field": "tags", "op": "contains", "value": True}, False),  # true is not 1
            ({"field": "flag", "op": "eq", "value": 1}, False),
            ({"field": "plan", "op": "contains", "value": "r"}, True),
            ({"field": "address", "path": ["city"], "op": "eq", "value": "Lisbon"}, True),
            ({"field": "address", "path": ["zip"], "op": "not_exists"}, True),
            ({"any": [{"field": "plan", "op": "eq", "value": "team"}, {"field": "seats", "op": "gt", "value": 5}]},
             True),
            ({"all": [{"field": "plan", "op": "eq", "value": "pro"}, {"not": {"field": "seats", "op": "gte",
                                                                              "value": 1000}}]}, True),
        ]
        for rule, want in cases:
            self.assertEqual(matches(rule, fields, NOW), want, rule)

    def test_the_drills_rules_evaluate_as_before(self):
        from drill.audiences import RULES, expected_members
        views = {"a": {"plan": "pro", "color": "teal"}, "b": {"plan": "team", "email": "b@x.io", "c0": 30},
                 "c": None, "d": {"color": "teal"}, "e": {"color": "teal", "plan": "free"}}
        # d has no plan: `ne` is false on a missing field.
        self.assertEqual(expected_members(views), {"pro": ["a"], "paying": ["a", "b"], "reachable": ["b"],
                                                   "teal-free": ["e"], "busy-or-blue": ["b"]})
        self.assertEqual(set(RULES), {"pro", "paying", "reachable", "teal-free", "busy-or-blue"})


def event(kind, audience, user, version, event_id=None):
    return {"detail-type": f"Audience {kind}", "detail": {
        "id": event_id or f"{audience}-{user}-{version}", "audience_id": audience, "external_user_id": user,
        "user_version": version, "at": f"2026-12-06T00:00:0{version}.000Z"}}


class Oracle(unittest.TestCase):
    def test_a_user_is_its_accepted_writes_merged_in_order(self):
        self.assertEqual(scale.fields_of([
            {"external_user_id": "p1", "traits": {"plan": "pro", "bucket": 1, "lastPage": "/"}},
            {"external_user_id": "p1", "traits": {"lastPage": "/a"}},
            {"external_user_id": "p1", "email": "p1@x.io", "traits": {"bucket": 2, "seats": None}}]),
            {"plan": "pro", "bucket": 2, "lastPage": "/a", "email": "p1@x.io"})

    def test_expected_members_are_the_rules_over_the_users_at_that_instant(self):
        rules = {"b01": {"field": "bucket", "op": "eq", "value": 1},
                 "recent": {"field": "signupDate", "op": "within_last", "value": "PT10M"}}
        users = {"p1": {"bucket": 1, "signupDate": at(9 * 60_000)}, "p2": {"bucket": 2, "signupDate": at(60_000)}}
        self.assertEqual(scale.expected_members(rules, users, NOW), {"b01": {"p1"}, "recent": {"p1", "p2"}})
        self.assertEqual(scale.expected_members(rules, users, NOW + 2 * 60_000)["recent"], {"p2"})

    def test_members_listed_and_replayed_must_both_equal_the_reference(self):
        expected = {"trial": {"u1", "u2"}, "recent": set()}
        self.assertEqual(scale.wrong_memberships(expected, {"trial": ["u1", "u2"], "recent": []},
                                                 {"trial": ["u1", "u2"]}), [])
        wrong = scale.wrong_memberships(expected, {"trial": ["u1"], "recent": ["u9"]},
                                        {"trial": ["u1", "u2"], "recent": []})
        self.assertEqual([(w["audience"], w["user"], w["expected"], w["listed"], w["replayed"]) for w in wrong],
                         [("trial", "u2", True, False, True), ("recent", "u9", False, True, False)])
        self.assertEqual(scale.wrong_memberships(expected, {"trial": ["u1"]}, {"trial": ["u1"]}, ignore={"u2"}), [])

    def test_replay_counts_each_event_once_in_version_order(self):
        envelopes = [event("Entered", "b01", "p1", 1), event("Exited", "b01", "p1", 2),
                     event("Entered", "b01", "p1", 1),  # a repeat
                     event("Entered", "b02", "p1", 2), event("Entered", "b02", "p2", 3)]
        members, alternating, count = replay(envelopes, ["b01", "b02", "b03"])
        self.assertEqual(members, {"b01": [], "b02": ["p1", "p2"], "b03": []})
        self.assertTrue(alternating)
        self.assertEqual(count, 4)
        _, alternating, _ = replay([event("Entered", "b01", "p1", 1), event("Entered", "b01", "p1", 2)], ["b01"])
        self.assertFalse(alternating)

    def test_every_accepted_upsert_is_in_the_users_table(self):
        # The workspace is the key's first part, whichever way the user is listed.
        items = [{"pk": "w#a1", "workspace_shard": "w#3", "external_user_id": "a1", "traits": {}},
                 {"pk": "w#p1", "workspace_id": "w", "external_user_id": "p1", "traits": {"lastPage": "/p3"}},
                 {"pk": "w#p2", "workspace_shard": "w#0", "external_user_id": "p2", "traits": {"lastPage": "/p1"}},
                 {"pk": "not a user"}]
        expected = {("w", "a1"): {"plan": "free"}, ("w", "p1"): {"lastPage": "/p3"},
                    ("w", "p2"): {"lastPage": "/p2"}, ("w", "a2"): {"plan": "trial"}}
        self.assertEqual(scale.applied(items, expected), [{"workspace": "w", "user": "a2", "stored": False},
                                                          {"workspace": "w", "user": "p2", "stored": True}])

    def test_time_moves_are_late_past_60_s_missing_when_none_came(self):
        edge = NOW
        expected = [("w/recent", "u1", "Audience Exited", edge), ("w/recent", "u2", "Audience Exited", edge),
                    ("w/old", "u1", "Audience Entered", edge), ("w/recent", "u3", "Audience Exited", edge)]
        events = [("w/recent", "u1", "Audience Exited", edge + 800),
                  ("w/recent", "u2", "Audience Exited", edge + 61_000),
                  ("w/old", "u1", "Audience Entered", edge + 1_200),
                  ("w/recent", "u1", "Audience Exited", edge + 90_000),  # a repeat: the first counts
                  ("w/recent", "u9", "Audience Exited", edge)]  # no edge explains it
        moves = scale.time_moves(expected, events)
        self.assertEqual({k: moves[k] for k in ("expected", "arrived", "missing", "late", "early", "unexpected")},
                         {"expected": 4, "arrived": 3, "missing": 1, "late": 1, "early": 0, "unexpected": 1})
        self.assertEqual(moves["max_s"], 61.0)
        self.assertEqual(scale.time_moves([("a", "u", "Audience Exited", edge)],
                                          [("a", "u", "Audience Exited", edge + 60_000)])["late"], 0)


class Report(unittest.TestCase):
    TABLES = {"users-t": "users", "aud-t": "audiences", "mem-t": "audience-members", "rl-t": "rate-limits",
              "idem-t": "idempotency"}
    WORKSPACES = {"sh1": "heavy", "sl1-000": "light"}

    def label(self, table, key):
        return scale.label({"table": table, "key": key, "kind": "write"}, self.TABLES, self.WORKSPACES)

    def test_hot_keys_are_named_and_given_their_workspace(self):
        def digest(text):
            return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]

        self.assertEqual(self.label("mem-t", "u#sh1#p001"),
                         {"what": "audience-members: a user's audience state", "workspace": "sh1"})
        self.assertEqual(self.label("mem-t", "a#sl1-000#trial"),
                         {"what": "audience-members: an audience's member list", "workspace": "sl1-000"})
        self.assertEqual(self.label("mem-t", "a#sh1#b01#15"),
                         {"what": "audience-members: an audience's member list", "workspace": "sh1"})
        self.assertEqual(self.label("mem-t", "n#sh1#b01#3#7")["what"], "audience-members: a member-count shard")
        self.assertEqual(self.label("aud-t", "sh1"),
                         {"what": "audiences: a workspace's audience definitions", "workspace": "sh1"})
        self.assertEqual(self.label("aud-t", "sh1#12"),
                         {"what": "audiences: copy 12 of a workspace's audience definitions", "workspace": "sh1"})
        self.assertEqual(self.label("aud-t", "b#sh1#b01"),
                         {"what": "audiences: an audience's build progress", "workspace": "sh1"})
        self.assertEqual(self.label("rl-t", "sh1")["what"], "rate-limits: a workspace's rate-limit counter")
        self.assertEqual(self.label("rl-t", "c#sh1#3"),
                         {"what": "rate-limits: a workspace's rate-limit counter", "workspace": "sh1"})
        self.assertEqual(self.label("users-t/index/workspace-shard-users", digest("sh1#12")),
                         {"what": "users index workspace-shard-users: shard 12 of workspace sh1", "workspace": "sh1"})
        self.assertEqual(self.label("users-t", "sl1-000#a00001")["workspace"], "sl1-000")
        self.assertEqual(self.label("users-t/index/workspace-users", digest("sh1")),
                         {"what": "users index workspace-users: the key of workspace sh1", "workspace": "sh1"})
        self.assertEqual(self.label("mem-t/index/due", digest("7")),
                         {"what": "audience-members index due: shard 7 (all workspaces)", "workspace": None})
        self.assertEqual(self.label("PutEvents", "us-east-1")["workspace"], None)
        self.assertEqual(self.label("users-t", "other#u1")["workspace"], None)
        self.assertEqual(scale.digest("sh1"), digest("sh1"))

    def summary(self, lost=0, hot=(), alone=400.0, beside=500.0, late=0, missing=0):
        return {"lost": lost, "hot_keys": list(hot), "time_moves": {"late": late, "missing": missing},
                "classes": {"light_alone": {"p99_ms": alone}, "light_beside_heavy": {"p99_ms": beside}}}

    def test_the_final_line(self):
        self.assertEqual(scale.final_line(self.summary()),
                         "scale: lost 0, hot keys 0, light p99 500 (alone 400), time moves late 0")
        line = scale.final_line(self.summary(lost=3, hot=[("t", "k", "write")] * 2, alone=None, beside=1234.6,
                                             late=7))
        self.assertEqual(line, "scale: lost 3, hot keys 2, light p99 1235 (alone n/a), time moves late 7")

    def test_the_checks(self):
        self.assertEqual(scale.failed_checks(self.summary()), [])
        self.assertEqual(scale.failed_checks(self.summary(beside=600.0)), [])  # exactly 1.5x
        failed = scale.failed_checks(self.summary(lost=1, hot=[("t", "k", "write")], beside=601.0, missing=1))
        self.assertEqual(len(failed), 4)
        self.assertEqual(len(scale.failed_checks(self.summary(alone=None))), 1)

    def test_hot_keys_are_grouped_by_kind_and_whose(self):
        def hot(phase, workspace, what, over, peak):
            return {"phase": phase, "workspace": workspace, "what": what, "kind": "write", "seconds_over": over,
                    "max_demand_per_s": peak, "limit_per_s": 1.0}
        summary = {"workspaces": {"light": ["l1", "l2"], "heavy": "h"}, "hot_key_detail": [
            hot("phase1", "l1", "rate-limits: a workspace's rate-limit counter", 5, 3.0),
            hot("phase1", "l2", "rate-limits: a workspace's rate-limit counter", 9, 2.0),
            hot("phase2", "h", "users index workspace-users: the key of workspace h", 40, 4.0),
            hot("phase2", None, "audience-members index due: shard 3 (all workspaces)", 2, 2.0)]}
        groups = scale.grouped_hot_keys(summary)
        self.assertEqual([(g["phase"], g["whose"], g["what"], g["keys"], g["seconds_over"], g["max_demand_per_s"])
                          for g in groups], [
            ("phase1", "light", "rate-limits: a workspace's rate-limit counter", 2, 9, 3.0),
            ("phase2", "heavy", "users index workspace-users: the key of its workspace", 1, 40, 4.0),
            ("phase2", "shared", "audience-members index due: shard 3 (all workspaces)", 1, 2, 2.0)])

    def test_the_measured_section_renders_a_summary(self):
        moves = {"expected": 2, "arrived": 2, "missing": 0, "late": 0, "early": 0, "p50_s": 0.4, "p99_s": 0.9,
                 "max_s": 0.9, "unexpected": 0}
        cls = {"sent": 10, "accepted": 10, "retried": 0, "measured": 1, "entered": 1, "p50_ms": 300.0,
               "p99_ms": 400.0, "max_ms": 400.0, "lost": 0, "time_moves": moves, "hot_keys": [],
               "throttled": {"t": 3}, "run_seconds": 20}
        summary = {"plan": scale.load_plan(0.001, 20), "lost": 0, "hot_keys": [], "hot_key_detail": [],
                   "workspaces": {"light": ["l1"], "heavy": "h", "import": "i", "poison": "p"},
                   "classes": {c: dict(cls) for c in ("light_alone", "light_beside_heavy", "heavy", "import")},
                   "time_moves": moves, "poison": {"parked_after_s": 8.0, "settled_after_redrive_s": 1.5},
                   "setup": {"seconds": 600, "audiences_ready_s": 500}, "parked_at_end": {"messages": 0},
                   "put_events": {"phase1": {"calls": 40, "entries": 50}, "phase2": {"calls": 8, "entries": 80}},
                   "run_seconds": 900}
        section = scale.measured_section(summary)
        self.assertIn("`PutEvents`: phase 1: 40 calls of 50 entries (1.2 a call); phase 2: 8 calls of 80 entries "
                      "(10.0 a call)", section)
        self.assertTrue(section.startswith("## Measured\n"))
        self.assertIn("    scale: lost 0, hot keys 0, light p99 400 (alone 400), time moves late 0", section)
        self.assertIn("| light, beside the heavy one | 10 | 10 | 1 of 1 | 300.0 | 400.0 | 0 | 0 of 2 | 0 |", section)
        self.assertIn("a few arriving in one second are chance", section)  # 1 unit/s at 0.001
        self.assertNotIn("less than some single", scale.measured_section(dict(summary, plan=scale.load_plan(0.01, 20))))

    def test_the_measured_section_replaces_only_itself_at_the_end(self):
        doc = "# Scale\n\ntext\n\n## Scaling AWS down locally\n\nmore\n"
        once = scale.with_measured(doc, "## Measured\n\nfirst\n")
        self.assertEqual(once, doc.rstrip("\n") + "\n\n## Measured\n\nfirst\n")
        self.assertEqual(scale.with_measured(once, "## Measured\n\nsecond\n"),
                         doc.rstrip("\n") + "\n\n## Measured\n\nsecond\n")


if __name__ == "__main__":
    unittest.main()
