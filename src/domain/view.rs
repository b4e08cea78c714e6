//! The user as reads return it (contract, "Reads").

use super::{ProfileField, UserProfile};
use serde_json::{json, Map, Value};
use time::macros::format_description;
use time::OffsetDateTime;

/// `{"external_user_id", "email"?, "traits", "rejected_traits"?, "created_at",
/// "updated_at"}`; email only for callers allowed to see PII, removed fields absent,
/// `rejected_traits` (most recent first) only when a trait was not stored.
pub fn user_view(external_user_id: &str, user: &UserProfile, with_email: bool) -> Value {
    let mut traits = Map::new();
    for (field, value) in &user.profile {
        if let Some(name) = field.trait_name() {
            traits.insert(name.to_owned(), Value::String(value.clone()));
        }
    }
    for (name, value) in &user.traits {
        traits.insert(name.clone(), value.clone());
    }
    let mut view = Map::new();
    view.insert("external_user_id".into(), external_user_id.into());
    if with_email {
        if let Some(email) = user.profile.get(&ProfileField::Email) {
            view.insert("email".into(), email.clone().into());
        }
    }
    view.insert("traits".into(), Value::Object(traits));
    if !user.rejected.is_empty() {
        let rejected = user
            .rejected
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "reason": r.reason.as_str(),
                    "accepted_at": format_millis(r.stamp.accepted_at),
                })
            })
            .collect();
        view.insert("rejected_traits".into(), Value::Array(rejected));
    }
    for (name, millis) in [
        ("created_at", user.created_at),
        ("updated_at", user.updated_at),
    ] {
        if let Some(text) = millis.and_then(format_millis) {
            view.insert(name.into(), text.into());
        }
    }
    Value::Object(view)
}

/// A user's fields as a read shows them, side by side: `email` and every trait by its
/// name (what change events diff and audience rules name). Empty for an erased user.
pub fn read_fields(user: &UserProfile) -> Map<String, Value> {
    if !user.exists() {
        return Map::new();
    }
    let mut fields = Map::new();
    for (field, value) in &user.profile {
        let name = field.trait_name().unwrap_or("email");
        fields.insert(name.to_owned(), Value::String(value.clone()));
    }
    for (name, value) in &user.traits {
        fields.insert(name.clone(), value.clone());
    }
    fields
}

/// Milliseconds since the epoch as `2026-11-27T10:00:00.123Z`.
pub fn format_millis(millis: i64) -> Option<String> {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()?
        .format(&format)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Changes, Stamp};

    #[test]
    fn view_puts_known_traits_back_under_their_names_and_hides_email() {
        let mut user = UserProfile::default();
        let mut changes = Changes::default();
        changes
            .profile
            .insert(ProfileField::Email, Some("jane@acme.io".into()));
        changes.profile.insert(
            ProfileField::SignupDate,
            Some("2026-05-17T14:00:00Z".into()),
        );
        changes
            .traits
            .insert("favoriteColor".into(), Some(json!("teal")));
        user.apply(&Stamp::new(1_795_773_600_123, "r"), &changes);

        let private = user_view("usr_42", &user, false);
        assert_eq!(
            private,
            json!({"external_user_id": "usr_42",
                   "traits": {"signupDate": "2026-05-17T14:00:00Z", "favoriteColor": "teal"},
                   "created_at": "2026-11-27T10:00:00.123Z", "updated_at": "2026-11-27T10:00:00.123Z"})
        );
        assert_eq!(user_view("usr_42", &user, true)["email"], "jane@acme.io");
    }
}
