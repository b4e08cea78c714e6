//! The rule language: errors at the rule's paths, each op, time, and a property test
//! against a plain evaluator of the JSON rule.

use super::*;
use crate::contract::parse_rule;
use proptest::prelude::*;
use serde_json::json;

const NOW: i64 = 1_800_000_000_000;

fn rule(value: Value) -> Rule {
    parse_rule(&value).unwrap_or_else(|errors| panic!("{value} refused: {errors:?}"))
}

fn fields(value: Value) -> Fields {
    value.as_object().unwrap().clone()
}

#[test]
fn each_op_and_wrong_types_are_false() {
    let user = fields(
        json!({"email": "Jane@Acme.io", "plan": "pro", "seats": 12, "tags": ["a", "b"],
        "signupDate": "2026-05-17T14:00:00Z", "address": {"city": "Lisbon"}}),
    );
    let yes = |r: Value| assert!(rule(r.clone()).matches(&user, NOW), "{r}");
    let no = |r: Value| assert!(!rule(r.clone()).matches(&user, NOW), "{r}");
    yes(json!({"field": "email", "op": "eq", "value": "jane@acme.io"}));
    yes(json!({"field": "email", "op": "ends_with", "value": "@ACME.IO"}));
    no(json!({"field": "plan", "op": "eq", "value": "PRO"}));
    yes(json!({"field": "plan", "op": "in", "value": ["free", "pro"]}));
    yes(json!({"field": "plan", "op": "not_in", "value": ["free"]}));
    yes(json!({"field": "seats", "op": "gte", "value": 12}));
    no(json!({"field": "plan", "op": "gt", "value": 1}));
    yes(json!({"field": "signupDate", "op": "lt", "value": "2026-05-17T16:00:01+02:00"}));
    yes(json!({"field": "tags", "op": "contains", "value": "b"}));
    yes(json!({"field": "plan", "op": "contains", "value": "r"}));
    yes(json!({"field": "address", "path": ["city"], "op": "starts_with", "value": "Lis"}));
    yes(json!({"field": "gone", "op": "not_exists"}));
    no(json!({"field": "gone", "op": "ne", "value": 1}));
    yes(json!({"not": {"field": "plan", "op": "eq", "value": "free"}}));
    yes(
        json!({"all": [{"field": "plan", "op": "exists"}, {"any": [{"field": "seats", "op": "lt", "value": 5}, {"field": "seats", "op": "gt", "value": 10}]}]}),
    );
}

#[test]
fn a_time_rule_changes_its_mind_at_the_window_edge() {
    let day = 86_400_000;
    let seen = |at: i64| fields(json!({"seen": crate::domain::format_millis(at).unwrap()}));
    let recent = rule(json!({"field": "seen", "op": "within_last", "value": "P7D"}));
    let user = seen(NOW - 6 * day);
    assert!(recent.matches(&user, NOW));
    let edge = recent.next_change_after(&user, NOW).unwrap();
    assert_eq!(edge, NOW + day + 1);
    assert!(recent.matches(&user, edge - 1) && !recent.matches(&user, edge));
    assert!(recent.is_time_relative());
    let old = rule(json!({"field": "seen", "op": "not_within_last", "value": "PT12H"}));
    let future = seen(NOW + 1_000);
    assert!(!recent.matches(&future, NOW) && !old.matches(&future, NOW));
    assert_eq!(recent.next_change_after(&future, NOW), Some(NOW + 1_000));
    assert_eq!(
        duration_ms("P1DT2H30M"),
        Some(day + 2 * 3_600_000 + 30 * 60_000)
    );
    for bad in ["P", "PT", "7D", "P1W", "P1Y", "PT1D", "P-1D"] {
        assert_eq!(duration_ms(bad), None, "{bad}");
    }
}

/// The plain evaluator: the JSON rule read directly, as the contract words it.
fn reference(rule: &Value, user: &Value) -> bool {
    if let Some(items) = rule.get("all") {
        return items.as_array().unwrap().iter().all(|r| reference(r, user));
    }
    if let Some(items) = rule.get("any") {
        return items.as_array().unwrap().iter().any(|r| reference(r, user));
    }
    if let Some(inner) = rule.get("not") {
        return !reference(inner, user);
    }
    let field = rule["field"].as_str().unwrap();
    let value = user.get(field);
    let expected = &rule["value"];
    let op = rule["op"].as_str().unwrap();
    let Some(value) = value else {
        return op == "not_exists";
    };
    let number = |v: &Value| v.as_f64();
    // `email` compares strings ignoring case; everything else exactly.
    let email = field == "email";
    let fold = |text: &str| {
        if email {
            text.to_lowercase()
        } else {
            text.to_owned()
        }
    };
    let equal = |a: &Value, b: &Value| match (a, b) {
        (Value::String(a), Value::String(b)) => fold(a) == fold(b),
        _ => a == b,
    };
    match op {
        "exists" => true,
        "not_exists" => false,
        "eq" => equal(value, expected),
        "ne" => !equal(value, expected),
        "in" => expected.as_array().unwrap().iter().any(|e| equal(value, e)),
        "not_in" => !expected.as_array().unwrap().iter().any(|e| equal(value, e)),
        "gt" | "gte" | "lt" | "lte" => match (number(value), number(expected)) {
            (Some(a), Some(b)) if value.is_number() => match op {
                "gt" => a > b,
                "gte" => a >= b,
                "lt" => a < b,
                _ => a <= b,
            },
            _ => false,
        },
        "contains" => match value {
            Value::String(text) => expected
                .as_str()
                .is_some_and(|p| fold(text).contains(&fold(p))),
            Value::Array(items) => items.iter().any(|item| equal(item, expected)),
            _ => false,
        },
        "starts_with" => value
            .as_str()
            .zip(expected.as_str())
            .is_some_and(|(t, p)| fold(t).starts_with(&fold(p))),
        "ends_with" => value
            .as_str()
            .zip(expected.as_str())
            .is_some_and(|(t, p)| fold(t).ends_with(&fold(p))),
        _ => unreachable!("{op}"),
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0..4i64).prop_map(Value::from),
        "(a|ab|b|ba|A|aB)".prop_map(Value::from),
        Just(json!(["a", 1])),
        Just(Value::Bool(true)),
    ]
}

fn arb_condition() -> impl Strategy<Value = Value> {
    let field = proptest::sample::select(vec!["x", "y", "z", "email"]);
    let op = proptest::sample::select(vec![
        "eq",
        "ne",
        "in",
        "not_in",
        "exists",
        "not_exists",
        "gt",
        "gte",
        "lt",
        "lte",
        "contains",
        "starts_with",
        "ends_with",
    ]);
    (
        field,
        op,
        arb_value(),
        proptest::collection::vec(arb_value(), 1..3),
    )
        .prop_map(|(field, op, value, list)| match op {
            "exists" | "not_exists" => json!({"field": field, "op": op}),
            "in" | "not_in" => json!({"field": field, "op": op, "value": list}),
            "gt" | "gte" | "lt" | "lte" => {
                json!({"field": field, "op": op, "value": value.as_i64().unwrap_or(2)})
            }
            "starts_with" | "ends_with" => {
                json!({"field": field, "op": op, "value": value.as_str().unwrap_or("a")})
            }
            _ => json!({"field": field, "op": op, "value": value}),
        })
}

fn arb_rule() -> impl Strategy<Value = Value> {
    arb_condition().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..3).prop_map(|rules| json!({"all": rules})),
            proptest::collection::vec(inner.clone(), 1..3).prop_map(|rules| json!({"any": rules})),
            inner.prop_map(|rule| json!({"not": rule})),
        ]
    })
}

proptest! {
    #[test]
    fn evaluation_equals_the_plain_reading_of_the_rule(
        rule_json in arb_rule(),
        user in proptest::collection::btree_map(proptest::sample::select(vec!["x", "y", "z", "email"]), arb_value(), 0..4),
    ) {
        let user = Value::Object(user.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
        let parsed = rule(rule_json.clone());
        prop_assert_eq!(parsed.matches(user.as_object().unwrap(), NOW), reference(&rule_json, &user), "{}", rule_json);
    }
}
