use super::*;

fn v(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

#[test]
fn syncoid_option_syntax() {
    let o = parse_zfs_opts("Lc e").unwrap();
    assert_eq!(o.iter().map(|o| o.letter).collect::<String>(), "Lce");
    let o = parse_zfs_opts("ux recordsize o compression=lz4").unwrap();
    assert_eq!(
        o[1],
        ZfsOpt {
            letter: 'x',
            value: Some("recordsize".into())
        }
    );
    assert_eq!(o[2].value.as_deref(), Some("compression=lz4"));
    assert_eq!(parse_zfs_opts("ox a"), None);
    assert_eq!(parse_zfs_opts("o"), None);
}

#[test]
fn send_argv_exactly() {
    let opts = parse_zfs_opts("w c R").unwrap();
    let full = SendWhat::Full {
        snap: "pool/a b@s".into(),
    };
    assert_eq!(
        send(&full, &opts, false),
        v(&["zfs", "send", "-w", "-c", "-R", "pool/a b@s"])
    );
    let from_mark = SendWhat::Incremental {
        from: "p/f#m".into(),
        to: "p/f@s".into(),
        intermediates: false,
    };
    // -R is not allowed with a bookmark source; syncoid drops it.
    assert_eq!(
        send(&from_mark, &opts, true),
        v(&["sudo", "zfs", "send", "-w", "-c", "-i", "p/f#m", "p/f@s"])
    );
    let resume = SendWhat::Resume {
        token: "1-ab".into(),
    };
    assert_eq!(
        estimate(&resume, &opts, false),
        v(&["zfs", "send", "-nvP", "-t", "1-ab"])
    );
    let incr = SendWhat::Incremental {
        from: "p/f@a".into(),
        to: "p/f@b".into(),
        intermediates: true,
    };
    assert_eq!(
        estimate(&incr, &[], true),
        v(&["sudo", "zfs", "send", "-nvP", "-I", "p/f@a", "p/f@b"])
    );
}

#[test]
fn receive_argv_exactly_with_hostile_names() {
    let r = Receive {
        resumable: true,
        force: true,
        set_props: vec![("recordsize".into(), "1M".into())],
    };
    let user = parse_zfs_opts("u o compression=lz4 R").unwrap();
    assert_eq!(
        receive("p/it's $(x);`y`", &r, &user, false),
        v(&[
            "zfs",
            "receive",
            "-u",
            "-o",
            "compression=lz4",
            "-s",
            "-F",
            "-o",
            "recordsize=1M",
            "p/it's $(x);`y`"
        ])
    );
    let line = crate::shell::join(&receive("p/it's $(x)", &Receive::default(), &[], false));
    assert_eq!(line, "zfs receive 'p/it'\\''s $(x)'");
}

#[test]
fn estimates_parse() {
    assert_eq!(
        parse_estimate("full\tp/f@a\t3066616\nsize\t3066616\n"),
        Some(3066616)
    );
    let resume = "resume token contents:\nnvlist version: 0\n\ttoname = p/f@a\nfull\tp/f@a\t2144368\nsize\t2144368\n";
    assert_eq!(parse_estimate(resume), Some(2144368));
    assert_eq!(parse_estimate("cannot open"), None);
}

fn popts(src: bool, dst: bool) -> PipeOpts {
    PipeOpts {
        compress: Compress::Lzo,
        mbuffer_size: "16M".into(),
        source_bwlimit: Some("1m".into()),
        target_bwlimit: None,
        pv_options: Some(v(&["-p", "-t", "-e", "-r", "-b"])),
        meter: false,
        source_remote: src,
        target_remote: dst,
        direct: None,
    }
}

fn all_tools() -> Tools {
    Tools {
        source_mbuffer: true,
        target_mbuffer: true,
        local_mbuffer: true,
        local_pv: true,
        compress: true,
    }
}

#[test]
fn the_four_pipeline_shapes() {
    let send = v(&["zfs", "send", "p/f@s"]);
    let recv = v(&["zfs", "receive", "q/f"]);
    let shape = |segs: Vec<Segment>| -> Vec<(Where, Vec<String>)> {
        segs.into_iter()
            .map(|s| (s.at, s.stages.iter().map(|st| st[0].clone()).collect()))
            .collect()
    };
    let local = shape(pipeline(
        send.clone(),
        recv.clone(),
        10,
        &popts(false, false),
        &all_tools(),
    ));
    assert_eq!(
        local,
        vec![(Where::Local, v(&["zfs", "mbuffer", "pv", "zfs"]))]
    );
    let push = shape(pipeline(
        send.clone(),
        recv.clone(),
        10,
        &popts(false, true),
        &all_tools(),
    ));
    assert_eq!(
        push,
        vec![
            (Where::Local, v(&["zfs", "pv", "lzop", "mbuffer"])),
            (Where::Target, v(&["mbuffer", "lzop", "zfs"]))
        ]
    );
    let pull = shape(pipeline(
        send.clone(),
        recv.clone(),
        10,
        &popts(true, false),
        &all_tools(),
    ));
    assert_eq!(
        pull,
        vec![
            (Where::Source, v(&["zfs", "lzop", "mbuffer"])),
            (Where::Local, v(&["mbuffer", "lzop", "pv", "zfs"]))
        ]
    );
    let relay = shape(pipeline(
        send.clone(),
        recv.clone(),
        10,
        &popts(true, true),
        &all_tools(),
    ));
    assert_eq!(
        relay[1],
        (Where::Local, v(&["lzop", "pv", "lzop", "mbuffer"]))
    );
    let bare = shape(pipeline(
        send,
        recv,
        10,
        &popts(false, true),
        &Tools::default(),
    ));
    assert_eq!(
        bare,
        vec![(Where::Local, v(&["zfs"])), (Where::Target, v(&["zfs"]))]
    );
}

#[test]
fn mbuffer_gets_the_bandwidth_limit() {
    let segs = pipeline(
        v(&["zfs"]),
        v(&["zfs"]),
        1,
        &popts(false, false),
        &all_tools(),
    );
    assert_eq!(
        segs[0].stages[1],
        v(&["mbuffer", "-R", "1m", "-q", "-s", "128k", "-m", "16M"])
    );
    assert_eq!(
        segs[0].stages[2],
        v(&["pv", "-p", "-t", "-e", "-r", "-b", "-s", "1"])
    );
}

#[test]
fn compressors_pair_with_decompressors() {
    for name in Compress::NAMES {
        let c = Compress::parse(name).unwrap();
        assert_eq!(c.compress_argv().is_empty(), c == Compress::None);
        assert_eq!(c.decompress_argv().is_empty(), c == Compress::None);
    }
    assert_eq!(Compress::Gzip.decompress_argv(), v(&["zcat"]));
    assert_eq!(Compress::ZstdSlow.compress_argv(), v(&["zstd", "-19"]));
    assert_eq!(Compress::parse("bogus"), None);
}

#[test]
fn direct_connection_shapes() {
    assert_eq!(
        parse_direct("10.0.0.2:5000"),
        Some(Direct {
            connect: "10.0.0.2:5000".into(),
            listen: "10.0.0.2:5000".into(),
            timeout: 60,
            mbuffer: false
        })
    );
    let d = parse_direct("10.0.0.2:5000,0.0.0.0:5000,30,mbuffer").unwrap();
    assert!(d.mbuffer && d.timeout == 30 && d.listen == "0.0.0.0:5000");
    assert_eq!(parse_direct("a:1,b:2,x"), None);
    assert_eq!(parse_direct("a:1,b:2,3,4,5"), None);
    // Ports outside 1-65535 (socat would wrap 99999 to 34463) and
    // addresses that would reach socat or nc as options.
    for bad in ["a:99999", "a:0", "a:-1", "a:1,b:65536", "-x:1", ":5", "a:"] {
        assert_eq!(parse_direct(bad), None, "{bad}");
    }
    assert!(parse_direct("[::1]:65535").is_some());
    let mut o = popts(false, true);
    o.direct = parse_direct("127.0.0.1:9,127.0.0.1:9,5");
    let segs = pipeline(
        v(&["zfs", "send"]),
        v(&["zfs", "receive"]),
        1,
        &o,
        &all_tools(),
    );
    assert_eq!(
        segs[0].stages.last().unwrap(),
        &v(&["socat", "-", "TCP:127.0.0.1:9,retry=5,interval=1"])
    );
    assert_eq!(
        segs[1].stages[0],
        v(&["busybox", "nc", "-l", "127.0.0.1:9", "-w", "5"])
    );
    assert_eq!(segs[1].at, Where::Target);
    o.direct = Some(d);
    let segs = pipeline(
        v(&["zfs", "send"]),
        v(&["zfs", "receive"]),
        1,
        &o,
        &all_tools(),
    );
    assert_eq!(
        segs[1].stages[0][..5],
        v(&["mbuffer", "-W", "30", "-I", "0.0.0.0:5000"])
    );
    assert_eq!(
        segs[1].stages.len(),
        3,
        "no second mbuffer behind the mbuffer listener"
    );
}
