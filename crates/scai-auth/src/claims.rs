//! The access-token claims a Scai resource server reads (scaikey-tokens digest §4).

use serde::{Deserialize, Serialize};

/// Claims of a verified access token. Unknown claims are ignored; absent optional ones are `None`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// `usr_…` for user tokens; the client id for client_credentials tokens.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// Group ids (`grp_…`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub iss: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// `super_admin` / `partner_admin` / `tenant_admin` on admin tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `"client_credentials"` on service tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// RFC 8693 actor chain of an exchanged token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
}

impl Claims {
    pub fn scopes(&self) -> Vec<&str> {
        self.scope.split_whitespace().collect()
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().contains(&scope)
    }

    /// `name`, falling back to `preferred_username`, as ScaiDrive's reader does.
    pub fn display_name(&self) -> Option<&str> {
        self.name.as_deref().or(self.preferred_username.as_deref())
    }

    /// A machine token: `token_type` claim `client_credentials`, or `sub == client_id`.
    pub fn is_service(&self) -> bool {
        self.token_type.as_deref() == Some("client_credentials")
            || self.client_id.as_deref().is_some_and(|c| c == self.sub)
    }

    /// The delegating service of an exchanged token: `act.client_id`, falling back to `act.sub`.
    pub fn actor(&self) -> Option<String> {
        let act = self.act.as_ref()?;
        act.get("client_id")
            .or_else(|| act.get("sub"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }
}
