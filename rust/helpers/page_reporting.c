// SPDX-License-Identifier: GPL-2.0

#include <linux/mm.h>
#include <linux/scatterlist.h>

__rust_helper unsigned long rust_helper_page_reporting_sg_pfn(struct scatterlist *sg)
{
	return page_to_pfn(sg_page(sg));
}
