module maxd-tests/whip_publisher

go 1.19
