//! Phone numbers: validated and normalised to E.164.

use crate::error::ApiError;

/// Parses `input` (international form, `+` optional), checks it is a valid number of an
/// allowed country and not a VoIP number, and returns it in E.164 (`+79161234567`).
pub fn normalize(input: &str, allowed: &[u16]) -> Result<String, ApiError> {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.len() > 32 {
        return Err(ApiError::InvalidPhone(
            "give the number in international form, like +79161234567".into(),
        ));
    }
    let with_plus = if trimmed.starts_with('+') {
        trimmed.to_string()
    } else {
        format!("+{trimmed}")
    };
    let n = phonenumber::parse(None, &with_plus).map_err(|e| {
        ApiError::InvalidPhone(format!(
            "{e}; give it in international form, like +79161234567"
        ))
    })?;
    if !n.is_valid() {
        return Err(ApiError::InvalidPhone(
            "not a valid number for its country".into(),
        ));
    }
    let cc = n.code().value();
    if !allowed.contains(&cc) {
        return Err(ApiError::CountryNotAllowed(cc));
    }
    if n.number_type(&phonenumber::metadata::DATABASE) == phonenumber::Type::Voip {
        return Err(ApiError::VoipNumber);
    }
    Ok(n.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses() {
        let allowed = [7, 375];
        assert_eq!(
            normalize("+7 916 123-45-67", &allowed).unwrap(),
            "+79161234567"
        );
        assert_eq!(
            normalize("375291234567", &allowed).unwrap(),
            "+375291234567"
        );
        assert!(matches!(
            normalize("+14155552671", &allowed),
            Err(ApiError::CountryNotAllowed(1))
        ));
        assert!(matches!(
            normalize("+7123", &allowed),
            Err(ApiError::InvalidPhone(_))
        ));
        assert!(matches!(
            normalize("hello", &allowed),
            Err(ApiError::InvalidPhone(_))
        ));
        // UK 056 numbers are VoIP in the metadata.
        assert!(matches!(
            normalize("+44 56 1234 5678", &[44]),
            Err(ApiError::VoipNumber)
        ));
    }
}
