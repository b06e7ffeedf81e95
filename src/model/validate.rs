//! Django / DRF validation of the user fields, with Django's English messages.
//!
//! Each function takes the submitted string and returns every message that
//! applies, in the order DRF reports them; an empty vec means the value is
//! valid. The rules mirror what a DRF `ModelSerializer` over Django 5.2's
//! user model runs:
//!
//! * username: `UnicodeUsernameValidator`, then `max_length = 150`;
//! * email: `max_length = 254`, then Django's `EmailValidator` (which the
//!   `email_address` crate must accept too);
//! * profile picture: blank allowed, `max_length = 2048`, then Django's
//!   `URLValidator` limited to http and https;
//! * password: a 4096-byte cap, then Django's four default password
//!   validators (attribute similarity, minimum length 8, common, numeric).
//!
//! Like every DRF `CharField`, each field also refuses NUL characters. None
//! of the functions trims: DRF trims surrounding whitespace before
//! validating, so callers that want that must trim first.
//!
//! The common-password list is Django's own (see [`common`]).
//!
//! Known differences from Django: URLs may not contain control
//! characters anywhere; the `email_address` crate refuses a few exotic
//! addresses Django takes (an empty quoted local part, escaped spaces, domain
//! labels starting or ending with a non-alphanumeric character such as `§`);
//! and "entirely numeric" also counts fractions such as `½`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use email_address::{EmailAddress, Options};

mod common;

const BLANK: &str = "This field may not be blank.";
const NULL_CHARACTERS: &str = "Null characters are not allowed.";
const INVALID_USERNAME: &str = "Enter a valid username. This value may contain only letters, \
                                numbers, and @/./+/-/_ characters.";
const INVALID_EMAIL: &str = "Enter a valid email address.";
const INVALID_URL: &str = "Enter a valid URL.";
const PASSWORD_TOO_LONG: &str = "Ensure this field has no more than 4096 bytes.";
const PASSWORD_SIMILAR_TO_USERNAME: &str = "The password is too similar to the username.";
const PASSWORD_SIMILAR_TO_EMAIL: &str = "The password is too similar to the email address.";
const PASSWORD_TOO_SHORT: &str =
    "This password is too short. It must contain at least 8 characters.";
const PASSWORD_TOO_COMMON: &str = "This password is too common.";
const PASSWORD_ENTIRELY_NUMERIC: &str = "This password is entirely numeric.";

const USERNAME_MAX_CHARS: usize = 150;
const EMAIL_MAX_CHARS: usize = 254;
/// Django's `EmailValidator` refuses anything longer outright.
const EMAIL_VALIDATOR_MAX_CHARS: usize = 320;
/// Both the field's `max_length` and Django's `URLValidator.max_length`.
const URL_MAX_CHARS: usize = 2048;
const HOSTNAME_MAX_CHARS: usize = 253;
/// Django refuses longer IPv6 literals before parsing them.
const IPV6_MAX_CHARS: usize = 39;
const PASSWORD_MAX_BYTES: usize = 4096;
const PASSWORD_MIN_CHARS: usize = 8;
const MAX_SIMILARITY: f64 = 0.7;

/// Errors for a username (already known to be a JSON string). Empty vec = valid.
///
/// Letters, digits and `@ . + - _` only, at most 150 characters. A value
/// that breaks both rules gets both messages, the character rule's first.
pub fn username(value: &str) -> Vec<String> {
    if value.is_empty() {
        return vec![BLANK.to_owned()];
    }
    let mut errors = Vec::new();
    if !value.chars().all(is_username_char) {
        errors.push(INVALID_USERNAME.to_owned());
    }
    if value.chars().count() > USERNAME_MAX_CHARS {
        errors.push(too_many_chars(USERNAME_MAX_CHARS));
    }
    if value.contains('\0') {
        errors.push(NULL_CHARACTERS.to_owned());
    }
    errors
}

/// Errors for an email address. Empty vec = valid.
///
/// At most 254 characters, and an address Django's `EmailValidator` accepts
/// (`user@localhost` included) that the `email_address` crate parses too.
pub fn email(value: &str) -> Vec<String> {
    if value.is_empty() {
        return vec![BLANK.to_owned()];
    }
    let mut errors = Vec::new();
    if value.chars().count() > EMAIL_MAX_CHARS {
        errors.push(too_many_chars(EMAIL_MAX_CHARS));
    }
    if value.contains('\0') {
        errors.push(NULL_CHARACTERS.to_owned());
    }
    if !is_valid_email(value) {
        errors.push(INVALID_EMAIL.to_owned());
    }
    errors
}

/// Errors for a profile picture URL. Empty vec = valid.
///
/// `""` is valid; anything else must be an absolute http(s) URL of at most
/// 2048 characters. Longer values get the length message and, as Django's
/// `URLValidator` refuses them too, the invalid-URL message after it.
pub fn profile_picture(value: &str) -> Vec<String> {
    if value.is_empty() {
        return Vec::new();
    }
    let mut errors = Vec::new();
    if value.chars().count() > URL_MAX_CHARS {
        errors.push(too_many_chars(URL_MAX_CHARS));
    }
    if value.contains('\0') {
        errors.push(NULL_CHARACTERS.to_owned());
    }
    if !is_valid_url(value) {
        errors.push(INVALID_URL.to_owned());
    }
    errors
}

/// Django's four default password validators plus a 4096-byte maximum.
/// `username`/`email` are the submitted values (may be None or invalid) for the similarity check.
///
/// Messages come in Django's order: similarity, length, common, numeric.
/// An empty password gets only the blank message; one over 4096 bytes gets
/// only the byte-limit message (and costs nothing more to check); one with
/// a NUL character gets only DRF's NUL message, as DRF skips the password
/// validators when the field itself is invalid.
pub fn password(value: &str, username: Option<&str>, email: Option<&str>) -> Vec<String> {
    if value.is_empty() {
        return vec![BLANK.to_owned()];
    }
    if value.len() > PASSWORD_MAX_BYTES {
        return vec![PASSWORD_TOO_LONG.to_owned()];
    }
    if value.contains('\0') {
        return vec![NULL_CHARACTERS.to_owned()];
    }
    let mut errors = Vec::new();
    if let Some(message) = too_similar(value, username, email) {
        errors.push(message.to_owned());
    }
    if value.chars().count() < PASSWORD_MIN_CHARS {
        errors.push(PASSWORD_TOO_SHORT.to_owned());
    }
    // Django compares `password.lower().strip()` with its lowercase list.
    let lowered = value.to_lowercase();
    if common::is_common(lowered.trim_matches(is_python_space)) {
        errors.push(PASSWORD_TOO_COMMON.to_owned());
    }
    if value.chars().all(is_python_digit) {
        errors.push(PASSWORD_ENTIRELY_NUMERIC.to_owned());
    }
    errors
}

fn too_many_chars(limit: usize) -> String {
    format!("Ensure this field has no more than {limit} characters.")
}

/// Python's `\w` for `str` patterns.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Python's `str.isspace` (and so `\s`): Unicode white space plus the
/// information separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.isdigit`, nearly: decimal digits of every script and the
/// other digit-like numbers (superscripts, circled digits), but not letter
/// numbers such as Roman numerals. Unlike Python it also counts the other
/// numbers (fractions such as `½`, circled numbers above nine).
fn is_python_digit(c: char) -> bool {
    c.is_numeric() && !c.is_alphabetic()
}

/// `UnicodeUsernameValidator`: `^[\w.@+-]+\Z`.
fn is_username_char(c: char) -> bool {
    is_word_char(c) || matches!(c, '@' | '.' | '+' | '-')
}

// ---------------------------------------------------------------------------
// Email

fn is_valid_email(value: &str) -> bool {
    if value.chars().count() > EMAIL_VALIDATOR_MAX_CHARS {
        return false;
    }
    let Some((user, domain)) = value.rsplit_once('@') else {
        return false;
    };
    if !is_email_user_part(user) {
        return false;
    }
    // Django's allowlist is compared as is: `user@LOCALHOST` is refused.
    if domain != "localhost" && !is_email_domain_part(domain) {
        return false;
    }
    let options = Options::default()
        .without_display_text()
        .with_long_local_parts();
    match EmailAddress::parse_with_options(value, options) {
        // Django limits neither the domain's length nor its labels' bytes
        // (it counts a label's characters, above).
        Ok(_)
        | Err(email_address::Error::DomainTooLong | email_address::Error::SubDomainTooLong) => true,
        Err(_) => false,
    }
}

/// Django's `user_regex`: an ASCII dot-atom or a quoted string.
fn is_email_user_part(user: &str) -> bool {
    if let Some(inner) = user
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        return is_quoted_content(inner);
    }
    !user.is_empty()
        && user.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{}|~-".contains(c))
        })
}

/// The inside of Django's quoted-string local part: quoted text and
/// backslash-escaped pairs.
fn is_quoted_content(inner: &str) -> bool {
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let ok = if c == '\\' {
            chars.next().is_some_and(is_quoted_pair_char)
        } else {
            is_quoted_text_char(c)
        };
        if !ok {
            return false;
        }
    }
    true
}

/// `[\001-\010\013\014\016-\037!#-\[\]-\177]`: ASCII but NUL, tab, line feed,
/// carriage return, space, `"` and `\`.
fn is_quoted_text_char(c: char) -> bool {
    c.is_ascii() && !matches!(c, '\0' | '\t' | '\n' | '\r' | ' ' | '"' | '\\')
}

/// `[\001-\011\013\014\016-\177]` after a backslash: ASCII but NUL, line feed
/// and carriage return.
fn is_quoted_pair_char(c: char) -> bool {
    c.is_ascii() && !matches!(c, '\0' | '\n' | '\r')
}

/// Django's `domain_regex` (a domain name without a trailing dot) or
/// `literal_regex` (a bracketed IPv4 or IPv6 address).
fn is_email_domain_part(domain: &str) -> bool {
    match domain
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        Some(inner) => {
            is_ip_literal(inner) && (inner.parse::<Ipv4Addr>().is_ok() || is_ipv6(inner))
        }
        None => is_domain_name(domain, false),
    }
}

// ---------------------------------------------------------------------------
// URL

/// Django's `URLValidator` with `schemes = ["http", "https"]`, except that
/// every control character but NUL (which has its own message) is refused,
/// where Django lets some through in paths.
fn is_valid_url(value: &str) -> bool {
    if value.chars().count() > URL_MAX_CHARS
        || value
            .chars()
            .any(|c| is_python_space(c) || (c.is_control() && c != '\0'))
    {
        return false;
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    // What `urlsplit` takes as the authority, for its checks.
    let netloc = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    if netloc.contains('[') != netloc.contains(']') {
        return false;
    }
    if !urlsplit_hostname_ok(netloc) {
        return false;
    }
    // `[userinfo@]host[:port][path]`; the userinfo cannot hold an '@', so
    // it can only end at the first one.
    let with_userinfo = rest
        .split_once('@')
        .is_some_and(|(userinfo, after)| is_url_userinfo(userinfo) && is_url_host_port_path(after));
    with_userinfo || is_url_host_port_path(rest)
}

/// `urlsplit(value).hostname` must exist and have at most 253 characters.
fn urlsplit_hostname_ok(netloc: &str) -> bool {
    let host_info = netloc.rsplit_once('@').map_or(netloc, |(_, host)| host);
    let hostname = match host_info.split_once('[') {
        Some((_, bracketed)) => bracketed.split(']').next().unwrap_or_default(),
        None => host_info.split(':').next().unwrap_or_default(),
    };
    !hostname.is_empty() && hostname.chars().count() <= HOSTNAME_MAX_CHARS
}

/// `[^\s:@/]+(?::[^\s:@/]*)?` (white space is refused earlier).
fn is_url_userinfo(userinfo: &str) -> bool {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    !user.is_empty() && !user.contains('/') && !password.contains([':', '/'])
}

/// `host(?::[0-9]{1,5})?(?:[/?#]\S*)?` to the end of `s`.
fn is_url_host_port_path(s: &str) -> bool {
    let (host, after) = if s.starts_with('[') {
        match s.find(']') {
            Some(close) => s.split_at(close + 1),
            None => return false,
        }
    } else {
        s.split_at(s.find([':', '/', '?', '#']).unwrap_or(s.len()))
    };
    if !is_url_host(host) {
        return false;
    }
    let after = match after.strip_prefix(':') {
        Some(port) => {
            let digits = port
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(port.len());
            if !(1..=5).contains(&digits) {
                return false;
            }
            &port[digits..]
        }
        None => after,
    };
    after.is_empty() || after.starts_with(['/', '?', '#'])
}

/// An IPv4 address, a bracketed IPv6 address, `localhost`, or a domain
/// name with a top-level domain.
fn is_url_host(host: &str) -> bool {
    if let Some(inner) = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return is_ip_literal(inner) && is_ipv6(inner);
    }
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok()
        || is_domain_name(host, true)
}

// ---------------------------------------------------------------------------
// Shared host rules

/// Django's `DomainNameValidator` patterns (`hostname_re + domain_re +
/// tld_re`), shared by its email and URL validators: at least two labels of
/// letters, digits and inner hyphens, at most 63 characters each, where
/// "letters" include everything from U+00A1 to U+FFFF; the last label (the
/// TLD) has at least two characters and no digits, unless it is punycode
/// (`xn--...`). URLs may end with one dot, email domains may not.
fn is_domain_name(host: &str, allow_trailing_dot: bool) -> bool {
    let host = if allow_trailing_dot {
        host.strip_suffix('.').unwrap_or(host)
    } else {
        host
    };
    let labels: Vec<&str> = host.split('.').collect();
    let Some((tld, others)) = labels.split_last() else {
        return false;
    };
    if others.is_empty() {
        return false;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.chars().count())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || is_unicode_letter(c))
    };
    let tld_ok = !tld.starts_with('-')
        && !tld.ends_with('-')
        && ((2..=63).contains(&tld.chars().count())
            && tld
                .chars()
                .all(|c| c.is_ascii_alphabetic() || c == '-' || is_unicode_letter(c))
            || is_punycode_label(tld));
    others.iter().all(|label| label_ok(label)) && tld_ok
}

/// Django's `ul` range of "Unicode letters".
fn is_unicode_letter(c: char) -> bool {
    ('\u{a1}'..='\u{ffff}').contains(&c)
}

/// `xn--[a-z0-9]{1,59}`, case-insensitively.
fn is_punycode_label(label: &str) -> bool {
    label
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("xn--"))
        && (5..=63).contains(&label.len())
        && label[4..].chars().all(|c| c.is_ascii_alphanumeric())
}

/// The inside of `[...]` as Django's patterns let it through to the IP
/// address check: hex digits, colons and dots.
fn is_ip_literal(inner: &str) -> bool {
    !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
}

fn is_ipv6(s: &str) -> bool {
    s.chars().count() <= IPV6_MAX_CHARS && s.parse::<Ipv6Addr>().is_ok()
}

// ---------------------------------------------------------------------------
// Password similarity

/// Django's `UserAttributeSimilarityValidator` over username then email:
/// the message for the first attribute part the password is too similar
/// to, by `SequenceMatcher.quick_ratio() >= 0.7`.
fn too_similar(
    password: &str,
    username: Option<&str>,
    email: Option<&str>,
) -> Option<&'static str> {
    let password: Vec<char> = password.to_lowercase().chars().collect();
    let attributes = [
        (username, PASSWORD_SIMILAR_TO_USERNAME),
        (email, PASSWORD_SIMILAR_TO_EMAIL),
    ];
    for (value, message) in attributes {
        let Some(value) = value.filter(|value| !value.is_empty()) else {
            continue;
        };
        let value = value.to_lowercase();
        // `re.split(r"\W+", value) + [value]`; the extra empty parts that
        // splitting on each character gives are skipped like Python's.
        let mut parts = value
            .split(|c: char| !is_word_char(c))
            .chain(std::iter::once(value.as_str()));
        if parts.any(|part| is_similar(&password, part)) {
            return Some(message);
        }
    }
    None
}

fn is_similar(password: &[char], part: &str) -> bool {
    let password_len = password.len();
    let part_len = part.chars().count();
    // Django's `exceeds_maximum_length_ratio`: too short a part to matter.
    if password_len >= 10 * part_len
        && (part_len as f64) < MAX_SIMILARITY / 2.0 * password_len as f64
    {
        return false;
    }
    quick_ratio(password, part) >= MAX_SIMILARITY
}

/// `difflib.SequenceMatcher(a=a, b=b).quick_ratio()`: twice the size of
/// the multiset intersection of the characters over the total length.
fn quick_ratio(a: &[char], b: &str) -> f64 {
    let mut available: HashMap<char, usize> = HashMap::new();
    let mut b_len = 0usize;
    for c in b.chars() {
        *available.entry(c).or_default() += 1;
        b_len += 1;
    }
    let mut matches = 0usize;
    for c in a {
        if let Some(count) = available.get_mut(c).filter(|count| **count > 0) {
            *count -= 1;
            matches += 1;
        }
    }
    let total = a.len() + b_len;
    if total == 0 {
        1.0
    } else {
        2.0 * matches as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(messages: &[&str]) -> Vec<String> {
        messages.iter().map(|m| (*m).to_owned()).collect()
    }

    fn max_chars(limit: usize) -> String {
        format!("Ensure this field has no more than {limit} characters.")
    }

    // -- username -----------------------------------------------------------

    #[test]
    fn usernames_of_letters_digits_and_the_five_symbols_are_valid() {
        for name in [
            "alice",
            "Bob_99",
            "user.name+tag@x-y_z",
            "Ünïcødé",
            "名前",
            "٣٤",
            "a",
            &"a".repeat(150),
            &"é".repeat(150),
        ] {
            assert_eq!(username(name), Vec::<String>::new(), "{name}");
        }
    }

    #[test]
    fn a_blank_username_gets_only_the_blank_message() {
        assert_eq!(username(""), strings(&[BLANK]));
    }

    #[test]
    fn usernames_with_other_characters_are_invalid() {
        for name in ["has space", "a/b", "semi;colon", "tab\t", "emoji😀", "x!"] {
            assert_eq!(username(name), strings(&[INVALID_USERNAME]), "{name}");
        }
    }

    #[test]
    fn usernames_over_150_characters_are_too_long() {
        assert_eq!(username(&"x".repeat(151)), vec![max_chars(150)]);
        assert_eq!(username(&"é".repeat(151)), vec![max_chars(150)]);
        assert_eq!(
            username(&"!".repeat(151)),
            vec![INVALID_USERNAME.to_owned(), max_chars(150)]
        );
    }

    #[test]
    fn nul_characters_are_refused_in_usernames() {
        assert_eq!(
            username("a\0b"),
            strings(&[INVALID_USERNAME, NULL_CHARACTERS])
        );
    }

    // -- email --------------------------------------------------------------

    #[test]
    fn ordinary_email_addresses_are_valid() {
        for address in [
            "user@example.com",
            "First.Last+tag@sub.example.co.uk",
            "o'brien@example.ie",
            "user@localhost",
            "user@xn--bcher-kva.de",
            "user@example.xn--p1ai",
            "user@bücher.de",
            "user@[127.0.0.1]",
            "user@[::1]",
            "\"quoted.local\"@example.com",
            "\"at@sign\"@example.com",
            "\"esc\\\"aped\"@example.com",
            "user@例え.テスト",
            "user@[::ffff:1.2.3.4]",
            "a@b.co",
            &format!("{}@example.com", "l".repeat(100)),
        ] {
            assert_eq!(email(address), Vec::<String>::new(), "{address}");
        }
    }

    #[test]
    fn a_blank_email_gets_only_the_blank_message() {
        assert_eq!(email(""), strings(&[BLANK]));
    }

    #[test]
    fn malformed_email_addresses_are_invalid() {
        for address in [
            "not-an-email",
            "nope",
            "@example.com",
            "user@",
            "user@@example.com",
            "a@b@example.com",
            "user@example",
            "user@LOCALHOST",
            "user@example.c",
            "user@example.123",
            "user@example.c0m",
            "a@1.2.3.45",
            "user@example.com.",
            "user@.example.com",
            "user@exa..mple.com",
            "user@-example.com",
            "user@example-.com",
            "user@example.com-",
            "user@exa_mple.com",
            "user@1.2.3.4",
            "user@[1.2.3.999]",
            "user@[IPv6:::1]",
            "us er@example.com",
            "user@exam ple.com",
            " user@example.com",
            "user@example.com ",
            "user\t@example.com",
            ".user@example.com",
            "user.@example.com",
            "us..er@example.com",
            "üser@example.com",
            "A <a@b.c>",
            "<a@b.c>",
            "\"unterminated@example.com",
            "\"has space\"@example.com",
            "\"unescaped\"quote\"@example.com",
            "user@[0000:0000:0000:0000:0000:ffff:192.168.100.228]",
            "user@😀.com",
            &format!("user@{}.com", "d".repeat(64)),
        ] {
            assert_eq!(email(address), strings(&[INVALID_EMAIL]), "{address}");
        }
    }

    #[test]
    fn email_addresses_over_254_characters_are_too_long() {
        let long_but_well_formed = format!("{}@example.com", "l".repeat(250));
        assert_eq!(email(&long_but_well_formed), vec![max_chars(254)]);
        // Django's EmailValidator itself refuses more than 320 characters.
        let longer = format!("{}@example.com", "l".repeat(310));
        assert_eq!(
            email(&longer),
            vec![max_chars(254), INVALID_EMAIL.to_owned()]
        );
        let long_and_malformed = "x".repeat(255);
        assert_eq!(
            email(&long_and_malformed),
            vec![max_chars(254), INVALID_EMAIL.to_owned()]
        );
    }

    #[test]
    fn nul_characters_are_refused_in_emails() {
        assert_eq!(
            email("a\0b@example.com"),
            strings(&[NULL_CHARACTERS, INVALID_EMAIL])
        );
    }

    // -- profile picture ----------------------------------------------------

    #[test]
    fn blank_and_absolute_http_urls_are_valid_pictures() {
        for url in [
            "",
            "https://example.com/a.png",
            "http://example.com",
            "HTTPS://EXAMPLE.COM/A.PNG",
            "https://cdn.example.co.uk:8443/img/me.jpg?size=64#top",
            "https://example.com?x=1",
            "https://example.com#frag",
            "https://example.com.",
            "http://localhost:8000/media/a.png",
            "http://127.0.0.1/a.png",
            "http://[::1]:8080/a.png",
            "http://[2001:db8::1]/",
            "https://user:pass@example.com/a.png",
            "https://bücher.de/bild.png",
            "https://xn--bcher-kva.xn--p1ai/",
            "https://a-b.example.com/ü?q=ä",
            &format!("https://example.com/{}", "p".repeat(2048 - 20)),
        ] {
            assert_eq!(profile_picture(url), Vec::<String>::new(), "{url}");
        }
    }

    #[test]
    fn everything_else_is_an_invalid_url() {
        for url in [
            "not a url",
            "ftp://x",
            "ftp://example.com/a.png",
            "example.com/a.png",
            "//example.com/a.png",
            "mailto:a@example.com",
            "http:/example.com",
            "http://",
            "http:///a.png",
            "http://x",
            "http://example",
            "http://localhost.",
            "http://example.c",
            "http://example.123",
            "http://1.2.3.999",
            "http://01.2.3.4",
            "http://-example.com",
            "http://example-.com",
            "http://exa_mple.com",
            "http://exa..mple.com",
            "http://example.com:",
            "http://example.com:123456",
            "http://example.com:80a",
            "http://[::1",
            "http://[::g]/",
            "http://[1.2.3.4]/",
            "http://example.com/a b.png",
            "http://example.com/a\tb",
            "http://example.com/a\nb",
            "http://example.com/\u{7}",
            " http://example.com",
            "http://example.com ",
            "http://user@/a.png",
            "http://a@b@example.com",
            "http://exa😀mple.com",
            &format!("http://{}.com", "a".repeat(64)),
            &format!("http://{}com", "abcdefghi.".repeat(26)),
        ] {
            assert_eq!(profile_picture(url), strings(&[INVALID_URL]), "{url:?}");
        }
    }

    #[test]
    fn pictures_over_2048_characters_are_too_long_and_invalid() {
        let url = format!("https://example.com/{}", "p".repeat(2048));
        assert_eq!(
            profile_picture(&url),
            vec![max_chars(2048), INVALID_URL.to_owned()]
        );
    }

    #[test]
    fn nul_characters_are_refused_in_pictures() {
        assert_eq!(
            profile_picture("https://example.com/\0"),
            strings(&[NULL_CHARACTERS])
        );
    }

    // -- password -----------------------------------------------------------

    #[test]
    fn good_passwords_are_valid() {
        for (pass, user, mail) in [
            ("correct horse battery staple", None, None),
            (
                "correct horse battery staple",
                Some("alice"),
                Some("alice@example.com"),
            ),
            (
                "correct-horse-battery-1",
                Some("user1"),
                Some("user1@example.com"),
            ),
            ("Grüße aus München 2024", None, None),
            ("пароль-для-теста", Some("иван"), None),
            ("🔑🔑🔑🔑🔑🔑🔑🔑", None, None),
            ("84629175038264x", None, None),
            // Roman numerals are letters to Python, not digits.
            ("ⅫⅫⅫⅫⅫⅫⅫⅫ", None, None),
        ] {
            assert_eq!(password(pass, user, mail), Vec::<String>::new(), "{pass}");
        }
    }

    #[test]
    fn a_blank_password_gets_only_the_blank_message() {
        assert_eq!(password("", Some("alice"), None), strings(&[BLANK]));
    }

    #[test]
    fn short_common_and_numeric_passwords_are_refused() {
        assert_eq!(
            password("Tr1ck!", None, None),
            strings(&[PASSWORD_TOO_SHORT])
        );
        assert_eq!(
            password("password", None, None),
            strings(&[PASSWORD_TOO_COMMON])
        );
        // Django lowercases and strips before looking the password up.
        assert_eq!(
            password("Password", None, None),
            strings(&[PASSWORD_TOO_COMMON])
        );
        assert_eq!(
            password("  PASSWORD \n", None, None),
            strings(&[PASSWORD_TOO_COMMON])
        );
        assert_eq!(
            password("12345678", None, None),
            strings(&[PASSWORD_TOO_COMMON, PASSWORD_ENTIRELY_NUMERIC])
        );
        assert_eq!(
            password("84629175038264", None, None),
            strings(&[PASSWORD_ENTIRELY_NUMERIC])
        );
        assert_eq!(
            password("1234", None, None),
            strings(&[
                PASSWORD_TOO_SHORT,
                PASSWORD_TOO_COMMON,
                PASSWORD_ENTIRELY_NUMERIC
            ])
        );
        // Python's str.isdigit counts every script's digits.
        assert_eq!(
            password("١٢٣٤٥٦٧٨٩", None, None),
            strings(&[PASSWORD_ENTIRELY_NUMERIC])
        );
    }

    #[test]
    fn the_common_list_is_case_sensitive_so_the_password_is_lowercased() {
        assert!(common::is_common("password"));
        assert!(!common::is_common("Password"));
    }

    #[test]
    fn passwords_similar_to_the_username_are_refused() {
        // quick_ratio("alice2024", "alice") = 2*5/14 = 0.714 >= 0.7.
        assert_eq!(
            password("alice2024", Some("alice"), None),
            strings(&[PASSWORD_SIMILAR_TO_USERNAME])
        );
        // Order does not matter to quick_ratio: 2*5/13 = 0.769.
        assert_eq!(
            password("ecila123", Some("alice"), None),
            strings(&[PASSWORD_SIMILAR_TO_USERNAME])
        );
        // 2*16/33 = 0.97.
        assert_eq!(
            password(
                "margaretthatcher9",
                Some("margaretthatcher"),
                Some("mt@example.com")
            ),
            strings(&[PASSWORD_SIMILAR_TO_USERNAME])
        );
    }

    #[test]
    fn passwords_just_below_the_similarity_bound_pass() {
        // 2*5/15 = 0.667.
        assert_eq!(
            password("alice12345", Some("alice"), None),
            Vec::<String>::new()
        );
        // Lowercased: "alicealice1" against "alice" is 2*5/16 = 0.625.
        assert_eq!(
            password("aliceAlice1", Some("alice"), None),
            Vec::<String>::new()
        );
        // "alice-2024" against "alice" is 2*5/15 = 0.667.
        assert_eq!(
            password("ALICE-2024", Some("Alice"), None),
            Vec::<String>::new()
        );
    }

    #[test]
    fn passwords_similar_to_a_part_of_the_email_are_refused() {
        // "zanzibarquokka" is a part: 2*14/29 = 0.966.
        assert_eq!(
            password(
                "zanzibarquokka7",
                Some("somebody"),
                Some("zanzibarquokka@example.com")
            ),
            strings(&[PASSWORD_SIMILAR_TO_EMAIL])
        );
        // The whole address is a part too: 2*15/31 = 0.968.
        assert_eq!(
            password("bob@example.com1", None, Some("bob@example.com")),
            strings(&[PASSWORD_SIMILAR_TO_EMAIL])
        );
    }

    #[test]
    fn only_the_first_similarity_is_reported_username_first() {
        assert_eq!(
            password("alice2024", Some("alice"), Some("alice@example.com")),
            strings(&[PASSWORD_SIMILAR_TO_USERNAME])
        );
        assert_eq!(
            password("zqxjvw", Some("zqxjvw"), Some("zqxjvw@example.com")),
            strings(&[PASSWORD_SIMILAR_TO_USERNAME, PASSWORD_TOO_SHORT])
        );
    }

    #[test]
    fn missing_empty_or_odd_attributes_are_harmless() {
        assert_eq!(
            password("correct horse", Some(""), Some("")),
            Vec::<String>::new()
        );
        assert_eq!(
            password("correct horse", Some("--!!--"), Some("@@@")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn parts_much_shorter_than_the_password_are_skipped() {
        let long = "b".repeat(40);
        assert!(!is_similar(&long.chars().collect::<Vec<_>>(), "b"));
        assert!(!is_similar(&['x'], ""));
    }

    #[test]
    fn quick_ratio_matches_difflib() {
        let a: Vec<char> = "abcd".chars().collect();
        assert!((quick_ratio(&a, "bcde") - 0.75).abs() < 1e-12);
        assert!((quick_ratio(&a, "aabb") - 0.5).abs() < 1e-12);
        assert!((quick_ratio(&[], "") - 1.0).abs() < 1e-12);
    }

    #[test]
    fn passwords_over_4096_bytes_get_only_the_byte_limit_message() {
        assert_eq!(
            password(&"k".repeat(4096), None, None),
            Vec::<String>::new()
        );
        assert_eq!(
            password(&"k".repeat(4097), None, None),
            strings(&[PASSWORD_TOO_LONG])
        );
        // Bytes, not characters: 2049 two-byte characters.
        assert_eq!(
            password(&"é".repeat(2049), None, None),
            strings(&[PASSWORD_TOO_LONG])
        );
        let mebibyte = "1".repeat(1 << 20);
        assert_eq!(
            password(&mebibyte, Some(&mebibyte), Some(&mebibyte)),
            strings(&[PASSWORD_TOO_LONG])
        );
    }

    #[test]
    fn nul_characters_are_refused_in_passwords() {
        assert_eq!(
            password("1\0", Some("1"), None),
            strings(&[NULL_CHARACTERS])
        );
    }
}
