// The cart drawer: keeps a draft order and places it.
import { formatMoney, request } from "./app.js";

const chime = new Audio(new URL("../media/order-placed.wav", import.meta.url));

export class Cart {
  constructor(customerId) {
    this.customerId = customerId;
    this.order = null;
  }

  async add(productId, quantity = 1) {
    if (!this.order) {
      this.order = await request("POST", "/orders/", { customer_id: this.customerId });
    }
    this.order = await request("POST", `/orders/${this.order.id}/lines/`, {
      product_id: productId,
      quantity,
    });
    return this.order;
  }

  total() {
    return this.order ? formatMoney(this.order.subtotal_cents, this.order.currency) : formatMoney(0);
  }

  async place() {
    this.order = await request("POST", `/orders/${this.order.id}/place/`);
    chime.play().catch(() => {});
    return this.order;
  }
}
