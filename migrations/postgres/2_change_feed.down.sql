DROP TABLE IF EXISTS dl_feed_consumers;
DROP TABLE IF EXISTS dl_feed_clock;
DROP TABLE IF EXISTS dl_feed_keys;
DROP TABLE IF EXISTS dl_feed;
