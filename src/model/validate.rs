//! TEMPORARY STUB (helper is writing the real module)
/// stub
pub fn username(_value: &str) -> Vec<String> {
    Vec::new()
}
/// stub
pub fn email(_value: &str) -> Vec<String> {
    Vec::new()
}
/// stub
pub fn profile_picture(_value: &str) -> Vec<String> {
    Vec::new()
}
/// stub
pub fn password(_value: &str, _username: Option<&str>, _email: Option<&str>) -> Vec<String> {
    Vec::new()
}
