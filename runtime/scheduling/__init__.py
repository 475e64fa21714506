"""Who runs which rows when: the ``static`` scheduler (one batch at a time) and the ``continuous`` one (rows
join and leave a running batch between steps), the rows' token ``budget`` and the ``batches`` they stream from.

Never imports torch: both drive any ``runtime.engine.interface`` engine.
"""
