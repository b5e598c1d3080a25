//! getopt(3)-style parsing as zfs does it: clustered flags (`-Hpd 1`),
//! attached values (`-d0`, `-oname`) and `--`.

pub struct Opts {
    pub flags: Vec<(char, Option<String>)>,
    pub operands: Vec<String>,
}

impl Opts {
    pub fn has(&self, c: char) -> bool {
        self.flags.iter().any(|(f, _)| *f == c)
    }
    pub fn value(&self, c: char) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| *f == c)
            .and_then(|(_, v)| v.as_deref())
    }
    pub fn values(&self, c: char) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(f, _)| *f == c)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }
}

/// `spec` lists the flag letters; a letter followed by `:` takes a value.
/// Err carries the offending flag.
pub fn parse(args: &[String], spec: &str) -> Result<Opts, String> {
    let takes = |c: char| spec.find(c).map(|i| spec[i + 1..].starts_with(':'));
    let mut flags = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a.len() == 1 {
            break;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            match takes(c) {
                None => return Err(format!("invalid option '{c}'")),
                Some(false) => flags.push((c, None)),
                Some(true) => {
                    let rest: String = chars[j + 1..].iter().collect();
                    let v = if !rest.is_empty() {
                        rest
                    } else {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| format!("missing argument for '{c}' option"))?
                    };
                    flags.push((c, Some(v)));
                    break;
                }
            }
            j += 1;
        }
        i += 1;
    }
    Ok(Opts {
        flags,
        operands: args[i..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn clusters_and_attached_values() {
        let o = parse(
            &v(&["-Hpd", "1", "-t", "snapshot", "guid", "x"]),
            "Hprd:t:o:",
        )
        .unwrap();
        assert!(o.has('H') && o.has('p'));
        assert_eq!(o.value('d'), Some("1"));
        assert_eq!(o.value('t'), Some("snapshot"));
        assert_eq!(o.operands, v(&["guid", "x"]));
        let o = parse(&v(&["-d0", "-H", "-oname"]), "Hd:o:").unwrap();
        assert_eq!((o.value('d'), o.value('o')), (Some("0"), Some("name")));
        assert!(parse(&v(&["-Z"]), "H").is_err());
    }
}
