//! The Helicone headers of the observability gateway, as payments-py builds them.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::ObservabilityError;
use crate::backend::Environment;
use crate::wire::AgentRequest;

/// The headers payments-py 1.18's `get_default_helicone_headers` builds: `Helicone-Auth`
/// with the gateway key (the `o11y` claim of the seller's API key), and the
/// `Helicone-Property-*` of the seller's `account`, its `environment` and the verified
/// `agent_request` (the [`observability`](crate::observability) docs list them).
///
/// [`PaymentContext::observability`](crate::PaymentContext::observability) calls it for
/// the request being served; `__private::observability::helicone_headers` lends it to
/// this repository's tests, which compare it with payments-py's.
pub(crate) fn helicone_headers(
    gateway_key: &str,
    account: &str,
    environment: Environment,
    agent_request: &AgentRequest,
) -> Result<HeaderMap, ObservabilityError> {
    use super::ObservabilityProblem::IncompleteAgentRequest as Missing;
    let balance = agent_request.balance.as_ref().ok_or(Missing("agentRequest.balance"))?;
    let text = |v: &Option<String>, name| v.clone().ok_or(Missing(name));
    let price = balance
        .price_per_credit
        .as_ref()
        .and_then(python_float)
        .ok_or(Missing("agentRequest.balance.pricePerCredit"))?;
    let batch = agent_request.batch.as_ref().and_then(python_bool).ok_or(Missing("agentRequest.batch"))?;
    let pairs = [
        ("Helicone-Auth", format!("Bearer {gateway_key}")),
        ("Helicone-Property-accountAddress", account.to_owned()),
        (
            "Helicone-Property-consumerAddress",
            text(&balance.holder_address, "agentRequest.balance.holderAddress")?,
        ),
        ("Helicone-Property-agentId", text(&agent_request.agent_id, "agentRequest.agentId")?),
        ("Helicone-Property-planId", text(&balance.plan_id, "agentRequest.balance.planId")?),
        ("Helicone-Property-planType", text(&balance.plan_type, "agentRequest.balance.planType")?),
        ("Helicone-Property-planName", text(&balance.plan_name, "agentRequest.balance.planName")?),
        ("Helicone-Property-agentName", text(&agent_request.agent_name, "agentRequest.agentName")?),
        (
            "Helicone-Property-agentRequestId",
            text(&agent_request.agent_request_id, "agentRequest.agentRequestId")?,
        ),
        ("Helicone-Property-pricePerCredit", price),
        ("Helicone-Property-environmentName", environment.as_str().to_owned()),
        ("Helicone-Property-batch", batch.to_owned()),
        ("Helicone-Property-ismarginBased", "false".to_owned()),
        ("Helicone-Property-marginPercent", "0".to_owned()),
    ];
    let mut headers = HeaderMap::with_capacity(pairs.len() + 2);
    for (name, value) in pairs {
        let value = HeaderValue::try_from(value).map_err(|_| Missing(field_of(name)))?;
        headers.insert(HeaderName::from_static(lower(name)), value);
    }
    if let Some(auth) = headers.get_mut("helicone-auth") {
        auth.set_sensitive(true);
    }
    Ok(headers)
}

/// The lower-case form of the static header names above (`HeaderName::from_static`
/// takes lower case only).
fn lower(name: &'static str) -> &'static str {
    match name {
        "Helicone-Auth" => "helicone-auth",
        "Helicone-Property-accountAddress" => "helicone-property-accountaddress",
        "Helicone-Property-consumerAddress" => "helicone-property-consumeraddress",
        "Helicone-Property-agentId" => "helicone-property-agentid",
        "Helicone-Property-planId" => "helicone-property-planid",
        "Helicone-Property-planType" => "helicone-property-plantype",
        "Helicone-Property-planName" => "helicone-property-planname",
        "Helicone-Property-agentName" => "helicone-property-agentname",
        "Helicone-Property-agentRequestId" => "helicone-property-agentrequestid",
        "Helicone-Property-pricePerCredit" => "helicone-property-pricepercredit",
        "Helicone-Property-environmentName" => "helicone-property-environmentname",
        "Helicone-Property-batch" => "helicone-property-batch",
        "Helicone-Property-ismarginBased" => "helicone-property-ismarginbased",
        _ => "helicone-property-marginpercent",
    }
}

/// The field a header's value comes from, for the error of a value that is not a valid
/// header value (a control character in a plan name, say).
fn field_of(header: &'static str) -> &'static str {
    match header {
        "Helicone-Auth" => "a gateway key that is a valid header value",
        "Helicone-Property-accountAddress" => "an account that is a valid header value",
        _ => "agentRequest fields that are valid header values",
    }
}

/// `str(float(value))` in Python: what payments-py writes for `pricePerCredit` (pydantic
/// reads a number or a numeric string as a float).
fn python_float(value: &serde_json::Value) -> Option<String> {
    let x = match value {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    Some(python_repr(x))
}

/// Python's `repr(float)`: the shortest digits that read back the same, in fixed
/// notation when the decimal exponent is in -5 < e < 16 (with `.0` on integers), else
/// in scientific notation with a signed, at least two-digit exponent.
fn python_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // `{:e}` gives the shortest round-trip digits: `d[.ddd]e<exp>`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let decpt = exp + 1;
    let body = if !(-4 < decpt && decpt <= 16) {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{rest}e{esign}{:02}", exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
    } else {
        let decpt = decpt as usize;
        if decpt >= digits.len() {
            format!("{digits}{}.0", "0".repeat(decpt - digits.len()))
        } else {
            format!("{}.{}", &digits[..decpt], &digits[decpt..])
        }
    };
    format!("{sign}{body}")
}

/// `str(bool(value)).lower()`, as pydantic reads a bool (`true`, `"false"`, `1`, `"0"`…).
fn python_bool(value: &serde_json::Value) -> Option<&'static str> {
    let b = match value {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => {
            let f = n.as_f64()?;
            if f == 0.0 {
                false
            } else if f == 1.0 {
                true
            } else {
                return None;
            }
        }
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => true,
            "false" | "0" | "no" | "off" | "f" | "n" => false,
            _ => return None,
        },
        _ => return None,
    };
    Some(if b { "true" } else { "false" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_prints_them() {
        // Python 3: repr(float(x)).
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000123, "0.000123"),
            (1.25e-7, "1.25e-07"),
            (123456789.0, "123456789.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e100, "1e+100"),
            (-2.5, "-2.5"),
            (f64::NAN, "nan"),
        ];
        for (x, python) in cases {
            assert_eq!(python_repr(x), python, "{x:e}");
        }
        assert_eq!(python_float(&serde_json::json!("0.5")).as_deref(), Some("0.5"));
        assert_eq!(python_float(&serde_json::json!(2)).as_deref(), Some("2.0"));
        assert_eq!(python_float(&serde_json::json!(null)), None);
    }
}
