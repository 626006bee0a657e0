from ssmtp_mailer.entry import main

raise SystemExit(main())
