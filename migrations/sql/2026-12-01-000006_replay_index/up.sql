-- `quizflow replay --source postgres` pages history by receipt time. A BRIN index is a few
-- pages per partition and costs next to nothing on the hot insert path (rows arrive in
-- receipt-time order, so block ranges stay tight); it narrows each page's read to the blocks
-- of its time window. A btree on received_at would cost every bulk insert an index update.
CREATE INDEX submissions_received_brin ON submissions USING brin (received_at);
