//! The rule language as the API takes it (contract, "Audiences"): JSON into a
//! [`Rule`], every problem reported at its path under `rule`, within the bounds that keep
//! one evaluation cheap (`docs/audiences.md`, "Cost of one evaluation").

use super::{ErrorCode, FieldError};
use crate::domain::audience::{duration_ms, instant_ms, Condition, Needle, Op, Rule, ValueSet};
use serde_json::{Map, Value};

/// At most this many conditions in one rule…
pub const MAX_CONDITIONS: usize = 50;
/// …nested at most this deep (a condition alone is depth 1).
pub const MAX_DEPTH: usize = 5;
/// The longest window of `within_last` / `not_within_last`.
pub const MAX_DURATION_MS: i64 = 3650 * 24 * 3_600_000;
/// Values of one `in` / `not_in` list: an evaluation compares against each.
pub const MAX_LIST_VALUES: usize = 1_000;
/// Characters of any string in a rule (a field, a path member, a value).
pub const MAX_RULE_STRING_CHARS: usize = 1_024;

/// Parses a rule, reporting every problem at its path under `rule`.
pub fn parse_rule(value: &Value) -> Result<Rule, Vec<FieldError>> {
    let mut parser = Parser::default();
    let rule = parser.rule(value, "rule", 1);
    if parser.conditions > MAX_CONDITIONS {
        parser.errors.push(FieldError::new(
            ErrorCode::TooMany,
            "rule",
            format!("a rule holds at most {MAX_CONDITIONS} conditions"),
        ));
    }
    match rule {
        Some(rule) if parser.errors.is_empty() => Ok(rule),
        _ => Err(parser.errors),
    }
}

#[derive(Default)]
struct Parser {
    errors: Vec<FieldError>,
    conditions: usize,
}

impl Parser {
    fn fail(&mut self, code: ErrorCode, at: &str, message: impl Into<String>) -> Option<Rule> {
        self.errors.push(FieldError::new(code, at, message));
        None
    }

    /// Every string in `value` (at `at`) within [`MAX_RULE_STRING_CHARS`].
    fn bound_strings(&mut self, value: &Value, at: &str) {
        match value {
            Value::String(text) if text.chars().count() > MAX_RULE_STRING_CHARS => {
                self.fail(
                    ErrorCode::TooLong,
                    at,
                    format!("{at} is over {MAX_RULE_STRING_CHARS} characters"),
                );
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, item)| self.bound_strings(item, &format!("{at}[{i}]"))),
            Value::Object(members) => members
                .iter()
                .for_each(|(name, item)| self.bound_strings(item, &format!("{at}.{name}"))),
            _ => {}
        }
    }

    fn rule(&mut self, value: &Value, at: &str, depth: usize) -> Option<Rule> {
        if depth > MAX_DEPTH {
            return self.fail(
                ErrorCode::TooDeep,
                at,
                format!("a rule nests at most {MAX_DEPTH} deep"),
            );
        }
        let Value::Object(members) = value else {
            return self.fail(
                ErrorCode::InvalidType,
                at,
                format!("{at} must be an object"),
            );
        };
        for group in ["all", "any"] {
            if let Some(items) = members.get(group) {
                if members.len() > 1 {
                    return self.fail(
                        ErrorCode::InvalidFormat,
                        at,
                        format!("{at} must hold `{group}` alone"),
                    );
                }
                let Value::Array(items) = items else {
                    let path = format!("{at}.{group}");
                    return self.fail(
                        ErrorCode::InvalidType,
                        &path,
                        format!("{path} must be an array"),
                    );
                };
                if items.is_empty() {
                    let path = format!("{at}.{group}");
                    return self.fail(ErrorCode::Empty, &path, format!("{path} must not be empty"));
                }
                let parsed: Vec<Option<Rule>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.rule(item, &format!("{at}.{group}[{i}]"), depth + 1))
                    .collect();
                let parsed: Option<Vec<Rule>> = parsed.into_iter().collect();
                return parsed.map(|rules| match group {
                    "all" => Rule::All(rules),
                    _ => Rule::Any(rules),
                });
            }
        }
        if let Some(inner) = members.get("not") {
            if members.len() > 1 {
                return self.fail(
                    ErrorCode::InvalidFormat,
                    at,
                    format!("{at} must hold `not` alone"),
                );
            }
            let inner = self.rule(inner, &format!("{at}.not"), depth + 1)?;
            return Some(Rule::Not(Box::new(inner)));
        }
        self.condition(members, at)
    }

    fn condition(&mut self, members: &Map<String, Value>, at: &str) -> Option<Rule> {
        self.conditions += 1;
        let errors_before = self.errors.len();
        for name in members.keys() {
            if !matches!(name.as_str(), "field" | "path" | "op" | "value") {
                let path = format!("{at}.{name}");
                self.fail(
                    ErrorCode::UnknownField,
                    &path,
                    format!("unknown member `{name}`"),
                );
            }
        }
        let field = match members.get("field") {
            Some(Value::String(field)) if !field.is_empty() => Some(field.clone()),
            Some(_) => {
                let path = format!("{at}.field");
                self.fail(
                    ErrorCode::InvalidType,
                    &path,
                    format!("{path} must be a trait name or `email`"),
                );
                None
            }
            None => {
                let path = format!("{at}.field");
                self.fail(ErrorCode::Required, &path, format!("{path} is required"));
                None
            }
        };
        let path = match members.get("path") {
            None => Some(Vec::new()),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect(),
            ),
            Some(_) => {
                let path = format!("{at}.path");
                self.fail(
                    ErrorCode::InvalidType,
                    &path,
                    format!("{path} must be an array of member names"),
                );
                None
            }
        };
        for (name, value) in members {
            self.bound_strings(value, &format!("{at}.{name}"));
        }
        let op = self.op(members, at);
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Rule::Condition(Condition {
            field: field?,
            path: path?,
            op: op?,
        }))
    }

    fn op(&mut self, members: &Map<String, Value>, at: &str) -> Option<Op> {
        let op_at = format!("{at}.op");
        let Some(op) = members.get("op").and_then(Value::as_str) else {
            let code = if members.contains_key("op") {
                ErrorCode::InvalidType
            } else {
                ErrorCode::Required
            };
            self.fail(code, &op_at, format!("{op_at} is required: one of {OPS}"));
            return None;
        };
        let value_at = format!("{at}.value");
        let operand = Operand {
            op,
            value: members.get("value"),
            at: &value_at,
        };
        match op {
            "eq" | "ne" | "contains" => self.any_value_op(&operand),
            "in" | "not_in" => self.list_op(&operand),
            "exists" | "not_exists" => self.presence_op(&operand),
            "gt" | "gte" | "lt" | "lte" => self.ordered_op(&operand),
            "starts_with" | "ends_with" => self.affix_op(&operand),
            "within_last" | "not_within_last" => self.window_op(&operand),
            _ => {
                self.fail(
                    ErrorCode::InvalidFormat,
                    &op_at,
                    format!("unknown op `{op}`: one of {OPS}"),
                );
                None
            }
        }
    }

    /// The value is missing (required) or not what the op takes, which `expected` says.
    fn wrong_value(&mut self, operand: &Operand<'_>, expected: &str) -> Option<Op> {
        let Operand { op, value, at } = *operand;
        let code = if value.is_none() {
            ErrorCode::Required
        } else {
            ErrorCode::InvalidType
        };
        self.fail(code, at, format!("{at} must be {expected} for `{op}`"));
        None
    }

    /// `eq`, `ne`, `contains`: any value but null.
    fn any_value_op(&mut self, operand: &Operand<'_>) -> Option<Op> {
        let Some(value) = operand.value.filter(|v| !v.is_null()).cloned() else {
            return self.wrong_value(operand, "a value");
        };
        Some(match operand.op {
            "eq" => Op::Eq(value),
            "ne" => Op::Ne(value),
            _ => Op::Contains(Box::new(Needle::new(value))),
        })
    }

    /// `in`, `not_in`: an array of at most [`MAX_LIST_VALUES`] values.
    fn list_op(&mut self, operand: &Operand<'_>) -> Option<Op> {
        let at = operand.at;
        match operand.value {
            Some(Value::Array(items)) if items.len() > MAX_LIST_VALUES => {
                self.fail(
                    ErrorCode::TooMany,
                    at,
                    format!("{at} holds at most {MAX_LIST_VALUES} values"),
                );
                None
            }
            Some(Value::Array(items)) => Some(if operand.op == "in" {
                Op::In(ValueSet::new(items))
            } else {
                Op::NotIn(ValueSet::new(items))
            }),
            _ => self.wrong_value(operand, "an array"),
        }
    }

    /// `exists`, `not_exists`: no value.
    fn presence_op(&mut self, operand: &Operand<'_>) -> Option<Op> {
        let Operand { op, value, at } = *operand;
        if value.is_some() {
            self.fail(
                ErrorCode::UnknownField,
                at,
                format!("`{op}` takes no value"),
            );
            return None;
        }
        Some(if op == "exists" {
            Op::Exists
        } else {
            Op::NotExists
        })
    }

    /// `gt`, `gte`, `lt`, `lte`: a number or an RFC 3339 date-time.
    fn ordered_op(&mut self, operand: &Operand<'_>) -> Option<Op> {
        match operand.value {
            Some(v @ Value::Number(_)) => Some(ordered(operand.op, v.clone())),
            Some(v @ Value::String(text)) if instant_ms(text).is_some() => {
                Some(ordered(operand.op, v.clone()))
            }
            _ => self.wrong_value(operand, "a number or an RFC 3339 date-time"),
        }
    }

    /// `starts_with`, `ends_with`: a string.
    fn affix_op(&mut self, operand: &Operand<'_>) -> Option<Op> {
        match operand.value {
            Some(Value::String(text)) => Some(if operand.op == "starts_with" {
                Op::StartsWith(text.clone())
            } else {
                Op::EndsWith(text.clone())
            }),
            _ => self.wrong_value(operand, "a string"),
        }
    }

    /// `within_last`, `not_within_last`: an ISO 8601 duration of at most P3650D.
    fn window_op(&mut self, operand: &Operand<'_>) -> Option<Op> {
        let at = operand.at;
        match operand.value.and_then(Value::as_str).map(duration_ms) {
            Some(Some(ms)) if ms <= MAX_DURATION_MS => Some(if operand.op == "within_last" {
                Op::WithinLast(ms)
            } else {
                Op::NotWithinLast(ms)
            }),
            Some(Some(_)) => {
                self.fail(ErrorCode::OutOfRange, at, format!("{at} is at most P3650D"));
                None
            }
            Some(None) => {
                self.fail(
                    ErrorCode::InvalidFormat,
                    at,
                    format!("{at} must be an ISO 8601 duration such as P7D or PT12H"),
                );
                None
            }
            None => self.wrong_value(operand, "an ISO 8601 duration"),
        }
    }
}

/// A condition's `op` and `value`, and the path errors about its value are reported at.
#[derive(Clone, Copy)]
struct Operand<'a> {
    op: &'a str,
    value: Option<&'a Value>,
    /// `<condition>.value`.
    at: &'a str,
}

const OPS: &str = "eq, ne, in, not_in, exists, not_exists, gt, gte, lt, lte, contains, starts_with, ends_with, within_last, not_within_last";

fn ordered(op: &str, value: Value) -> Op {
    match op {
        "gt" => Op::Gt(value),
        "gte" => Op::Gte(value),
        "lt" => Op::Lt(value),
        _ => Op::Lte(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(value: Value) -> Vec<(ErrorCode, String)> {
        parse_rule(&value)
            .expect_err("refused")
            .into_iter()
            .map(|e| (e.code, e.field.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn bad_rules_are_refused_at_their_path() {
        assert_eq!(
            refused(
                json!({"all": [{"field": "plan", "op": "eq", "value": "a"}, {"field": "plan", "op": "eq", "value": "b"}, {"field": "x", "op": "like", "value": 1}]})
            ),
            [(ErrorCode::InvalidFormat, "rule.all[2].op".to_owned())]
        );
        assert_eq!(
            refused(json!({"field": "plan", "op": "in", "value": "pro"})),
            [(ErrorCode::InvalidType, "rule.value".to_owned())]
        );
        assert_eq!(
            refused(json!({"field": "seen", "op": "within_last", "value": "7 days"})),
            [(ErrorCode::InvalidFormat, "rule.value".to_owned())]
        );
        assert_eq!(
            refused(json!({"field": "seen", "op": "within_last", "value": "P3651D"})),
            [(ErrorCode::OutOfRange, "rule.value".to_owned())]
        );
        let deep =
            json!({"not": {"not": {"not": {"not": {"not": {"field": "a", "op": "exists"}}}}}});
        assert_eq!(
            refused(deep),
            [(ErrorCode::TooDeep, "rule.not.not.not.not.not".to_owned())]
        );
        let many: Vec<Value> = (0..51)
            .map(|_| json!({"field": "a", "op": "exists"}))
            .collect();
        assert_eq!(
            refused(json!({"any": many})),
            [(ErrorCode::TooMany, "rule".to_owned())]
        );
        assert_eq!(
            refused(json!({"field": "a", "op": "exists", "value": 1})),
            [(ErrorCode::UnknownField, "rule.value".to_owned())]
        );
        assert_eq!(
            refused(json!({"all": []})),
            [(ErrorCode::Empty, "rule.all".to_owned())]
        );
        assert_eq!(
            refused(json!("plan")),
            [(ErrorCode::InvalidType, "rule".to_owned())]
        );
    }

    #[test]
    fn lists_and_strings_are_bounded_at_their_path() {
        let list = |n: usize| json!({"field": "plan", "op": "in", "value": vec!["a"; n]});
        assert!(parse_rule(&list(MAX_LIST_VALUES)).is_ok());
        assert_eq!(
            refused(json!({"not": list(MAX_LIST_VALUES + 1)})),
            [(ErrorCode::TooMany, "rule.not.value".to_owned())]
        );
        let long = "x".repeat(MAX_RULE_STRING_CHARS + 1);
        // Characters, not bytes: 1,024 four-byte characters are within the bound.
        let widest = "😀".repeat(MAX_RULE_STRING_CHARS);
        assert!(parse_rule(&json!({"field": "a", "op": "eq", "value": widest})).is_ok());
        assert_eq!(
            refused(json!({"all": [
                {"field": "a", "op": "not_in", "value": ["ok", long]},
                {"field": long, "op": "exists"},
                {"field": "a", "path": ["b", long], "op": "starts_with", "value": "c"},
                {"field": "a", "op": "eq", "value": {"deep": [long]}},
            ]})),
            [
                (ErrorCode::TooLong, "rule.all[0].value[1]".to_owned()),
                (ErrorCode::TooLong, "rule.all[1].field".to_owned()),
                (ErrorCode::TooLong, "rule.all[2].path[1]".to_owned()),
                (ErrorCode::TooLong, "rule.all[3].value.deep[0]".to_owned()),
            ]
        );
    }
}
