//! Durations as agent.toml writes them.

/// "90", "90s", "15m", "8h", "2d" -> a duration.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 15m, 8h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err(format!("{text:?}: a TTL must be longer than zero"));
    }
    Ok(std::time::Duration::from_secs(secs))
}
